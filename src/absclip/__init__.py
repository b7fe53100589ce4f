"""absclip: training-free zero-shot image classification with CLIP-family models (ABS and baselines)."""

from absclip._version import __version__
from absclip.api import Classifier, ClassifierSpec, load
from absclip.attention.factory import load_attention
from absclip.backbones.registry import load_clip
from absclip.core.settings import ABSConfig, WaffleSettings, WCAConfig
from absclip.errors import AbsclipError
from absclip.methods.base import Method, create_method, list_methods, register_method
from absclip.text.classes import ClassList, load_classes

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
    "create_method",
    "list_methods",
    "load",
    "load_attention",
    "load_classes",
    "load_clip",
    "register_method",
]
