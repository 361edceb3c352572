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


def test_asdf_reads_and_writes_take_turns_across_threads(monkeypatch, tmp_path):
    """asdf is not thread-safe (two to five threads parsing a fresh process's first WCSs at once failed in about
    one process of six: "dictionary changed size during iteration", a TaggedDict for a WCS). daskcal's asdf calls
    hold ASDF_LOCK: with a slowed-down asdf, threads reading WCS texts and _cal.fits files and writing WCS texts
    never run asdf at the same time, and every read gives a gwcs."""
    import threading
    import time

    import asdf
    import gwcs

    from daskcal.image import _dataset
    from daskcal.image._fits_write import read_fits_wcs, write_cal_fits
    from daskcal.image._simulate import simulate_images

    images = simulate_images(4, (32, 32), v2v3=True, seed=5).images
    wcss = [_dataset.get_wcs(ds) for ds in images]
    texts = [ds.attrs["wcs_asdf"] for ds in images]
    written = [_dataset.wcs_to_text(w) for w in wcss]  # one thread
    paths = [write_cal_fits(ds, tmp_path / f"t{k}_cal.fits") for k, ds in enumerate(images[:2])]
    state = {"active": 0, "peak": 0}
    count = threading.Lock()

    def slowed(real):
        def call(*args, **kwargs):
            with count:
                state["active"] += 1
                state["peak"] = max(state["peak"], state["active"])
            try:
                time.sleep(0.05)
                return real(*args, **kwargs)
            finally:
                with count:
                    state["active"] -= 1
        return call

    monkeypatch.setattr(asdf, "open", slowed(asdf.open))
    monkeypatch.setattr(asdf.AsdfFile, "write_to", slowed(asdf.AsdfFile.write_to))
    _dataset.wcs_from_text.cache_clear()
    results, errors = {}, []
    jobs = ([(f"read{k}", _dataset.wcs_from_text, t) for k, t in enumerate(texts)]
            + [(f"write{k}", _dataset.wcs_to_text, w) for k, w in enumerate(wcss)]
            + [(f"fits{k}", read_fits_wcs, p) for k, p in enumerate(paths)])
    start = threading.Barrier(len(jobs))

    def run(name, func, arg):
        start.wait()
        try:
            results[name] = func(arg)
        except Exception as exc:  # noqa: BLE001 - any error fails the test, below
            errors.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _dataset.wcs_from_text.cache_clear()
    assert not errors
    assert state["peak"] == 1
    assert all(isinstance(results[f"read{k}"], gwcs.WCS) for k in range(len(texts)))
    assert all(isinstance(results[f"fits{k}"], gwcs.WCS) for k in range(len(paths)))
    assert [results[f"write{k}"] for k in range(len(wcss))] == written
