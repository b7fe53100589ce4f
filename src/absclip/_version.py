"""The package version (a leaf module: nothing climbs to the package root for it)."""

__version__ = "0.1.0"
