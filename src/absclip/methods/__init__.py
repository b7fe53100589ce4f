"""Methods: one module per family; importing the package registers every built-in method."""

from absclip.methods import abs, heads, wca  # noqa: F401  (registration)
from absclip.methods.base import (
    Method,
    create_method,
    get_method_class,
    list_methods,
    register_method,
    settings_types,
    unregister_method,
)

__all__ = ["Method", "create_method", "get_method_class", "list_methods", "register_method", "settings_types",
           "unregister_method"]
