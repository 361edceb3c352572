"""asdf's extensions, loaded once per process with PyYAML's C parser for their manifests.

The first ``asdf.open`` (or ``AsdfFile``) of a process loads every installed asdf extension: it
imports their packages and parses each extension's manifest (49 YAML documents with asdf-astropy,
gwcs and stdatamodels installed). asdf 6 parses manifests with ``yaml.safe_load``, PyYAML's
pure-Python loader, while it reads ASDF files themselves with the libyaml-backed loader. Measured in
a fresh process with gwcs already imported (``asdf.get_config().extensions``, 4 runs on 2 cores):
0.63-0.70 s as asdf does it, 0.18-0.32 s with the manifests parsed by ``yaml.CSafeLoader``. A
resample on the command line pays it in its own process and in every worker process, before the
first WCS is read.

:func:`load_extensions` loads them with ``yaml.safe_load`` pointed at ``CSafeLoader`` for the time
it takes. The C loader resolves the same safe tags: a manifest parses to the same dict (tested on
every installed manifest, with the pure-Python loader as the oracle). Where PyYAML was built without
libyaml, asdf loads them as it would.

:data:`ASDF_LOCK` serialises daskcal's asdf reads and writes within a process. asdf, its converters and
the schemas they use fill caches lazily and are not thread-safe: two to five threads parsing their
process's first WCSs at once (the threaded scheduler's tasks, a worker's threads) failed in about one
process of six here, asdf warning "A node failed to convert with: dictionary changed size during
iteration" and leaving the WCS, or a model inside it, an unconverted ``TaggedDict``. asdf's conversion is
Python under the GIL, so the threads lose nothing by taking turns.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

#: Held around every asdf read and write daskcal makes (reentrant: a read may serialise what it read).
ASDF_LOCK = threading.RLock()
_loaded = False


def load_extensions() -> None:
    """Load asdf's installed extensions into its configuration, once per process.

    Call before the first ``asdf.open`` or ``asdf.AsdfFile`` of a code path; later calls return
    at once. Another thread calling ``yaml.safe_load`` while the extensions load gets the C
    loader's result, the same document.
    """
    global _loaded
    if _loaded:
        return
    with ASDF_LOCK:
        if _loaded:
            return
        import asdf
        import yaml

        config = asdf.get_config()
        if getattr(yaml, "__with_libyaml__", False):
            python_safe_load = yaml.safe_load
            yaml.safe_load = _c_safe_load
            try:
                config.extensions  # noqa: B018 - loads and keeps them in asdf's configuration
            finally:
                yaml.safe_load = python_safe_load
        else:
            config.extensions  # noqa: B018
        _loaded = True


@contextlib.contextmanager
def asdf_ready() -> Iterator[None]:
    """A block of asdf reads or writes: holds :data:`ASDF_LOCK`, with asdf's extensions loaded
    (:func:`load_extensions`)."""
    with ASDF_LOCK:
        load_extensions()
        yield


def _c_safe_load(stream):
    """``yaml.safe_load`` with libyaml's parser (PyYAML's ``CSafeLoader``)."""
    import yaml

    return yaml.load(stream, Loader=yaml.CSafeLoader)  # CSafeLoader: the safe tags only
