"""Loading weights safely: checkpoint reading without code execution, file digests, download hints, offline errors."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import zipfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch

from absclip.errors import AbsclipError

log = logging.getLogger(__name__)


def dir_digest(path: str) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(path).glob("*")):
        if p.is_file() and p.suffix in (".json", ".safetensors", ".bin"):
            h.update(p.name.encode())
            h.update(file_digest(p).encode())
    return h.hexdigest()[:16]

log = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """Return the sha256 of a file's bytes (memoised by path, size and mtime)."""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _is_jit_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def safe_load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a checkpoint with ``weights_only=True``; refuse pickles that would run code."""
    if _is_jit_archive(path):
        # OpenAI's original .pt files are TorchScript archives: no pickle of Python objects.
        sd = torch.jit.load(path, map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(key, None)
        return sd
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e) or isinstance(e, pickle.UnpicklingError):
            raise AbsclipError(
                f"Refusing to load {path}: it is not a plain tensor checkpoint (loading it would execute "
                "pickled code); re-save it as a state dict or .safetensors."
            ) from e
        raise AbsclipError(f"Could not read checkpoint {path}: {str(e).splitlines()[0]}") from e
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise AbsclipError(f"Checkpoint {path} does not hold a state dict of tensors.")
    if next(iter(ckpt), "").startswith("module."):
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    return ckpt


@contextlib.contextmanager
def quiet_root_logging() -> Iterator[None]:
    """open_clip logs to the root logger (e.g. "model initialized randomly"); we report that ourselves."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.CRITICAL))
    try:
        yield
    finally:
        root.setLevel(level)


def download_hint(what: str, where: str, flag: str) -> str:
    return (
        f"Could not obtain the {what} weights from {where} (no network or not found); download them on a "
        f"machine with access and pass the local file or directory with {flag}."
    )


def is_network_error(e: BaseException) -> bool:
    text = f"{type(e).__name__}: {e}".lower()
    keys = ("connection", "resolve", "offline", "network", "timed out", "timeout", "urlopen", "download",
            "max retries", "couldn't connect", "localentrynotfound", "hfhubhttperror", "repositorynotfound",
            "name or service not known", "temporary failure")
    return any(k in text for k in keys)
