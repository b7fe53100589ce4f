"""absclip: training-free zero-shot image classification with CLIP-family models (ABS and baselines).

The public names are imported on first use (PEP 562), so that ``import absclip`` (and the command
line's parser) stays fast: torch and the models load only when something needs them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from absclip._version import __version__

#: public name -> module that defines it
_EXPORTS = {
    "ABSConfig": "absclip.core.settings",
    "AbsclipError": "absclip.errors",
    "ClassList": "absclip.text.classes",
    "Classifier": "absclip.api",
    "ClassifierSpec": "absclip.api",
    "Method": "absclip.methods.base",
    "WCAConfig": "absclip.core.settings",
    "WaffleSettings": "absclip.core.settings",
    "classify": "absclip.api",
    "create_method": "absclip.methods.base",
    "list_methods": "absclip.methods.base",
    "load": "absclip.api",
    "load_attention": "absclip.attention.factory",
    "load_classes": "absclip.text.classes",
    "load_clip": "absclip.backbones.registry",
    "register_method": "absclip.methods.base",
}

if TYPE_CHECKING:
    from absclip.api import Classifier, ClassifierSpec, classify, load
    from absclip.attention.factory import load_attention
    from absclip.backbones.registry import load_clip
    from absclip.core.settings import ABSConfig, WaffleSettings, WCAConfig
    from absclip.errors import AbsclipError
    from absclip.methods.base import Method, create_method, list_methods, register_method
    from absclip.text.classes import ClassList, load_classes


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'absclip' has no attribute {name!r}")
    if module == "absclip.methods.base":
        importlib.import_module("absclip.methods")  # every built-in method registered
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "ABSConfig",
    "AbsclipError",
    "ClassList",
    "Classifier",
    "ClassifierSpec",
    "Method",
    "WCAConfig",
    "WaffleSettings",
    "__version__",
    "classify",
    "create_method",
    "list_methods",
    "load",
    "load_attention",
    "load_classes",
    "load_clip",
    "register_method",
]
