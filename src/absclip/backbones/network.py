"""Is the model hub reachable? One short check per process, so that a machine without network fails at once.

Without this, an offline run spends most of a minute importing the model libraries and retrying
downloads before it says the one useful sentence. Torch-free: the CLI calls it before any model
library is imported. When the hub is unreachable but the weights are in the local cache, loading
goes on in offline mode (no retries)."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from absclip.errors import WeightsUnavailableError

log = logging.getLogger(__name__)

#: seconds one connection attempt to the hub may take
CONNECT_TIMEOUT_S = 2.0
_TRUE = ("1", "true", "yes", "on")


def hub_offline_requested() -> bool:
    """Return True when the environment asks for offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Return whether the Hugging Face hub can be reached: offline mode, or one connection of at most 2 s."""
    if hub_offline_requested():
        return False
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError as e:
        log.debug("the model hub %s is not reachable: %s", url.hostname, e)
        return False


def hub_cache_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """Return the folders where Hugging Face hub downloads may be cached (``weights_dir`` first)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    dirs = [weights_dir, os.environ.get("HF_HUB_CACHE"), os.environ.get("HUGGINGFACE_HUB_CACHE"),
            os.path.join(home, "hub")]
    return [Path(d).expanduser() for d in dirs if d]


def repo_cached(repo: str, weights_dir: str | os.PathLike | None = None) -> bool:
    """Return whether hub repo ``org/name`` has a downloaded snapshot in a local cache."""
    folder = "models--" + repo.strip("/").replace("/", "--")
    return any(any((d / folder / "snapshots").glob("*")) for d in hub_cache_dirs(weights_dir)
               if (d / folder / "snapshots").is_dir())


def any_repo_cached(weights_dir: str | os.PathLike | None = None) -> bool:
    """Return whether any hub repo is in a local cache (else no hub model can load offline)."""
    return any(any(d.glob("models--*/snapshots/*")) for d in hub_cache_dirs(weights_dir) if d.is_dir())


def go_offline() -> None:
    """Make huggingface_hub and transformers use their caches only (no retries against an unreachable hub)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def _is_local(spec: str) -> bool:
    """A file or folder (existing or not: the loader reports a missing one), not a name on the hub."""
    return (os.path.exists(spec) or spec.startswith(("local-dir:", "/", ".", "~"))
            or spec.endswith((".json", ".pt", ".pth", ".bin", ".safetensors")))


def open_clip_knows(model: str, tag: str) -> bool:
    """Return whether open_clip has a config named ``model`` and some model has a pretrained tag ``tag``.

    Read from open_clip's files without importing it (importing it imports torch): an unknown name
    or tag is then reported by the loader itself ("Unknown model ...") rather than as a missing download.
    """
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return True
    root = Path(next(iter(spec.submodule_search_locations)))
    if not (root / "model_configs" / f"{model}.json").is_file():
        return False
    try:
        source = (root / "pretrained.py").read_text(encoding="utf-8")
    except OSError:
        return True
    return re.search(rf"(^|[\s(,]){re.escape(tag)}\s*=|[\"']{re.escape(tag)}[\"']", source, re.M) is not None


_HINT = ("Could not obtain the {what} weights from the Hugging Face hub{where} (no network: offline or unreachable, "
         "and not in the local cache); download them on a machine with access and pass the local file or directory "
         "with {flag}.")


def check_model_weights(model: str, pretrained: str | None, *, weights_dir: str | os.PathLike | None = None,
                        tag_repo: Callable[[str, str], str | None] | None = None) -> bool:
    """Fail at once when a CLIP model's weights come from the hub, the hub is unreachable and they are not cached.

    Args:
        model / pretrained: as for :func:`absclip.backbones.registry.load_clip`.
        weights_dir: where downloaded weights are cached besides Hugging Face's own cache.
        tag_repo: ``(model, tag) -> hub repo or None`` for open_clip names and tags (it imports
            open_clip; called only when some hub repo is cached at all).

    Returns:
        Whether the model's files look at hand (local files exist, or known name and tag with the
        hub reachable or the weights cached); False leaves a missing file or an unknown name or
        tag for the loader to report.

    Raises:
        WeightsUnavailableError: one sentence: what could not be obtained and what to pass instead.
    """
    hub_model = model.startswith(("hf-hub:", "hf:")) and not _is_local(model.split(":", 1)[1])
    if not hub_model and (pretrained in (None, "none") or _is_local(model) or _is_local(str(pretrained))):
        files = [model.split(":", 1)[1] if model.startswith("local-dir:") else model, str(pretrained)]
        return all(os.path.exists(f) for f in files if _is_local(f))
    if not hub_model and not open_clip_knows(model, str(pretrained)):
        return False  # the loader says what is wrong with the name or tag
    if hub_reachable():
        return True
    go_offline()
    if hub_model:
        if not repo_cached(model.split(":", 1)[1], weights_dir):
            # a transformers repo is saved with save_pretrained; an open_clip repo keeps its own layout
            flag = "`model` hf:/path/to/dir" if model.startswith("hf:") else "`model` local-dir:/path/to/dir"
            raise WeightsUnavailableError(_HINT.format(what=model, where="", flag=flag))
        return True
    what, flag = f"'{pretrained}' {model}", "`pretrained` /path/to/file"
    if not any_repo_cached(weights_dir):
        raise WeightsUnavailableError(_HINT.format(what=what, where="", flag=flag))
    repo = tag_repo(model, str(pretrained)) if tag_repo else None
    if repo and not repo_cached(repo, weights_dir):
        raise WeightsUnavailableError(_HINT.format(what=what, where=f" ({repo})", flag=flag))
    return True


def check_attention_weights(name: str | None, *, weights_dir: str | os.PathLike | None = None) -> None:
    """Fail at once when the attention model is a hub name, the hub is unreachable and it is not cached."""
    if not name or name == "clip" or _is_local(name) or hub_reachable():
        return
    go_offline()
    if not repo_cached(name, weights_dir):
        raise WeightsUnavailableError(_HINT.format(what=f"attention model {name}", where="",
                                                   flag="`attention_model` /path/to/dir"))
