"""``absclip-demo``: the small open_clip ViT trained on generated scenes and shipped inside the package.

A synthetic demonstration model (4.2 M parameters, 10 classes of coloured shapes, see ``docs/demo.md``)
that needs no download: its open_clip config, fp16 weights, class names and descriptions live in
``absclip/assets/demo``. Its own last-block attention is ABS's default attention source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from absclip.backbones.base import Backbone, LoaderRow, LoadRequest
from absclip.backbones.open_clip_loaders import OPENAI_FILE_TAGS, load_open_clip_config
from absclip.errors import AbsclipError

DEMO_MODEL = "absclip-demo"
#: what ``absclip models`` says about it
DEMO_SUMMARY = "synthetic demonstration model (10 coloured shapes, shipped; see docs/demo.md)"
DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"


def demo_file(name: str) -> Path:
    """Return a shipped file of the demo model (``classes.txt``, ``descriptions.json``, ...), checked to exist."""
    path = DEMO_DIR / name
    if not path.is_file():
        raise AbsclipError(f"The demo model's file {path} is missing; reinstall absclip.")
    return path


def is_demo(request: LoadRequest) -> bool:
    """Registry predicate: the shipped demonstration model."""
    return request.model == DEMO_MODEL


def load_demo(request: LoadRequest) -> Backbone:
    """Load the shipped demo model; its attention (``clip``) is the default attention source."""
    if request.pretrained not in (*OPENAI_FILE_TAGS, DEMO_MODEL):
        raise AbsclipError(f"{DEMO_MODEL} carries its own weights; leave out `pretrained` ({request.pretrained!r}).")
    config, weights = demo_file(f"{DEMO_MODEL}.json"), demo_file(f"{DEMO_MODEL}.safetensors")
    bb = load_open_clip_config(dataclasses.replace(request, model=str(config), pretrained=str(weights)))
    bb.default_attention = "clip"
    return bb


LOADERS = (LoaderRow("absclip-demo (shipped synthetic model)", is_demo, load_demo, 10),)
