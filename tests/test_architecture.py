"""Import contracts that keep the layout honest (read from the source with ``ast``; nothing is imported).

Every ``import`` counts, also the lazy ones inside functions; only imports under
``if TYPE_CHECKING:`` (annotations) are exempt. The contracts:

* layers: a package may import only packages on lower layers (or of its own layer when listed
  together as allowed); ``core`` imports nothing of absclip but ``errors``;
* nothing imports the CLI;
* no import cycles between sub-packages;
* no private name (``_x``) is imported from another sub-package.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "absclip"

#: top to bottom; a package may import the packages on the layers below its own
LAYERS: list[set[str]] = [
    {"(root)", "__main__"},  # absclip/__init__.py: the public face; python -m absclip
    {"cli"},
    {"serve"},  # absclip serve: the HTTP API over api.Classifier and diagnostics.explain
    {"engines", "diagnostics"},
    {"api"},
    {"methods"},
    {"attention"},
    {"text", "backbones"},
    {"io"},
    {"demo"},  # the demo model's generated scenes: numpy and PIL only
    {"core"},
    {"errors", "_version", "assets"},  # assets: data files only (the demo model), no code
]
#: the rule the layers can't say: core is pure
ONLY = {"core": {"errors"}, "backbones": {"errors", "core", "_version"}}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def _imports() -> list[tuple[str, str, list[str], int]]:
    """Return ``(importing module, imported module, imported names, line)`` for every absclip import."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = pkg[: len(pkg) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                if target == "absclip" or target.startswith("absclip."):
                    names = [a.name for a in node.names]
                    if target == "absclip":  # "from absclip import x": x may be a sub-package
                        for n in names:
                            out.append((module, f"absclip.{n}", [], node.lineno))
                    else:
                        out.append((module, target, names, node.lineno))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("absclip."):
                        out.append((module, a.name, [], node.lineno))
    return out


IMPORTS = _imports()


def _layer(pkg: str) -> int:
    for i, layer in enumerate(LAYERS):
        if pkg in layer:
            return i
    raise AssertionError(f"sub-package {pkg!r} is on no layer of tests/test_architecture.py; add it")


def test_every_package_has_a_layer():
    dirs = {p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"}
    pkgs = {_package(m) for m, *_ in IMPORTS} | dirs
    for p in pkgs:
        _layer(p.removesuffix(".py"))


def test_layers():
    bad = []
    for src, dst, _, line in IMPORTS:
        a, b = _package(src), _package(dst)
        if a == b or b == "(root)" and dst == "absclip":
            continue
        if _layer(b) <= _layer(a) or (a in ONLY and b not in ONLY[a]):
            bad.append(f"{src}:{line} imports {dst}")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_nothing_imports_the_cli():
    bad = [f"{s}:{line} imports {d}" for s, d, _, line in IMPORTS
           if _package(d) == "cli" and _package(s) not in ("cli", "__main__")]  # __main__: python -m absclip
    assert not bad, "\n".join(bad)


def test_no_cycles_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst, _, _ in IMPORTS:
        a, b = _package(src), _package(dst)
        if a != b:
            graph[a].add(b)
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, n, m]))
            if m not in state:
                visit(m, [*path, n])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])


def test_no_private_names_across_packages():
    bad = [f"{s}:{line} imports {n} from {d}" for s, d, names, line in IMPORTS for n in names
           if n.startswith("_") and not n.startswith("__") and _package(s) != _package(d)]
    assert not bad, "\n".join(bad)


def test_the_contracts_see_lazy_imports():
    """A function-level import counts (the checker is not fooled by a late import)."""
    lazy = [(s, d) for s, d, _, _ in IMPORTS if s == "absclip.cli.main"]
    assert lazy, "the import scan found nothing in absclip.cli.main"
