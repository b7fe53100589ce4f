"""Start-up: help and argument errors answer at once, without importing torch or the model libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "open_clip", "transformers", "huggingface_hub", "PIL.Image", "numpy", "tqdm")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "absclip", *args], capture_output=True, text=True, env=_env(),
                          timeout=60)
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize("args, code", [(("--help",), 0), (("classify", "--help"), 0), (("eval", "--help"), 0),
                                        (("classify",), 2), (("classify", "x.jpg"), 2)])
def test_help_and_argument_errors_are_fast(args: tuple[str, ...], code: int) -> None:
    proc, seconds = _run(*args)
    assert proc.returncode == code, proc.stderr
    assert seconds < 1.0, f"absclip {' '.join(args)} took {seconds:.2f} s"


def test_building_the_parser_imports_no_torch() -> None:
    code = ("import json, sys\nfrom absclip.cli.main import build_parser\np = build_parser()\n"
            "p.parse_args(['classify', 'x.jpg', '--classes', 'a,b', '--top-k', '3'])\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_import_absclip_is_lazy_and_complete() -> None:
    code = ("import json, sys\nimport absclip\nfast = 'torch' not in sys.modules\n"
            "names = {n: callable(getattr(absclip, n)) or isinstance(getattr(absclip, n), str)\n"
            "         for n in absclip.__all__}\n"
            "print(json.dumps([fast, all(names.values()), absclip.list_methods()[:1]]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    fast, complete, first = json.loads(proc.stdout)
    assert fast and complete and first
