"""asdf's extensions loaded with libyaml's parser for their manifests (daskcal.image._asdf)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

#: Prints, as JSON, each loaded extension's URI with the tags and types it declares, and whether
#: yaml.safe_load is PyYAML's own afterwards. argv[1]: "daskcal" loads through load_extensions.
_LIST_EXTENSIONS = """
import json, sys
import asdf, yaml
safe_load = yaml.safe_load
if sys.argv[1] == "daskcal":
    from daskcal.image._asdf import load_extensions
    load_extensions()
extensions = asdf.get_config().extensions
print(json.dumps({
    "extensions": sorted(
        [e.extension_uri or repr(e.delegate), sorted(t.tag_uri for t in e.tags),
         sorted(map(str, e.asdf_standard_requirement or [])) if hasattr(e, "asdf_standard_requirement") else [],
         len(e.converters), len(e.validators)]
        for e in extensions),
    "safe_load_restored": yaml.safe_load is safe_load,
}))
"""


def _installed_manifests() -> dict[str, bytes]:
    import asdf

    resources = asdf.get_config().resource_manager
    return {uri: resources[uri] for uri in resources if "/manifests/" in uri}


@pytest.mark.skipif(not getattr(yaml, "__with_libyaml__", False), reason="PyYAML built without libyaml")
def test_every_installed_manifest_parses_the_same_with_the_c_loader():
    from daskcal.image._asdf import _c_safe_load

    manifests = _installed_manifests()
    assert len(manifests) >= 10, sorted(manifests)  # asdf-standard, asdf-astropy, gwcs at least
    for uri, text in manifests.items():
        assert _c_safe_load(text) == yaml.safe_load(text), uri


def _extensions_of(how: str) -> dict:
    run = subprocess.run([sys.executable, "-c", _LIST_EXTENSIONS, how], capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_load_extensions_gives_asdfs_own_extensions_in_a_fresh_process():
    ours, asdfs = _extensions_of("daskcal"), _extensions_of("asdf")
    assert ours["extensions"] == asdfs["extensions"]
    assert len(ours["extensions"]) >= 10
    assert ours["safe_load_restored"] and asdfs["safe_load_restored"]

