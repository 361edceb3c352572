"""Lazy attribute access for the top-level package (keeps ``import daskcal`` fast)."""

from __future__ import annotations

import importlib


def lazy_getattr(package: str, exports: dict[str, str]):
    """Return a module ``__getattr__`` that imports ``exports[name]`` on first use."""

    def __getattr__(name: str):
        try:
            module = exports[name]
        except KeyError:
            msg = f"module {package!r} has no attribute {name!r}"
            raise AttributeError(msg) from None
        return getattr(importlib.import_module(module), name)

    return __getattr__
