"""Methods: one module per family; importing the package registers every method module in it.

A new method is one new module here (a :class:`~absclip.methods.base.Method` subclass decorated
with :func:`~absclip.methods.base.register_method`); it is found and registered on import.
Method modules import torch and the model side inside their functions (or under ``TYPE_CHECKING``),
so that registering them is fast: the command line builds its options from the registry
(``tests/test_startup.py`` checks that building the parser imports no torch).
"""

import importlib
import pkgutil

from absclip.methods.base import (
    Method,
    create_method,
    get_method_class,
    list_methods,
    register_method,
    settings_types,
    unregister_method,
)

#: imported first, so that ``absclip methods`` lists the baselines before ABS; every other module follows by name
_FIRST = ("heads", "wca", "abs")
#: the machinery, not methods (``batch`` imports torch and the model side)
_NOT_METHODS = ("base", "batch")
_OTHERS = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in (*_FIRST, *_NOT_METHODS))
for _name in (*_FIRST, *_OTHERS):
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["Method", "create_method", "get_method_class", "list_methods", "register_method", "settings_types",
           "unregister_method"]
