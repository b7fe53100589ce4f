"""The web page at ``/``: plain HTML and JavaScript shipped in the package (nothing fetched from elsewhere)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def page_html() -> str:
    """Return the page (``page.html`` next to this module)."""
    return files("absclip.serve").joinpath("page.html").read_text(encoding="utf-8")
