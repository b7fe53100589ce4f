"""absclip: training-free zero-shot image classification with CLIP-family models (ABS and baselines)."""

from .api import Classifier, load
from .attention import load_attention
from .config import ABSConfig, WCAConfig
from .errors import AbsclipError
from .methods import list_methods, register_method
from .models import load_clip
from .text import ClassList, load_classes

__version__ = "0.1.0"

__all__ = [
    "ABSConfig",
    "AbsclipError",
    "ClassList",
    "Classifier",
    "WCAConfig",
    "__version__",
    "list_methods",
    "load",
    "load_attention",
    "load_classes",
    "load_clip",
    "register_method",
]
