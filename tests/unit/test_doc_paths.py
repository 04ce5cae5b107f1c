"""Every ``forward_influence.…`` module path and ``forward_influence/….py`` file path named in
the docs (README, docs/, data/README.md) and in the package's docstrings and comments resolves:
a module or package, or an attribute of one (``forward_influence.analysis.family.tables``)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "forward_influence"
DOTTED = re.compile(r"(?<![\w/.])forward_influence(?:\.[A-Za-z_]\w*)+")
FILES = re.compile(r"(?<![\w.])forward_influence(?:/[A-Za-z_]\w*)+\.py")


def _module_exists(name: str) -> bool:
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def resolves(dotted: str) -> bool:
    """A module, or an attribute (class, function, constant, nested attribute) of the longest module prefix."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        mod = ".".join(parts[:k])
        if not _module_exists(mod):
            continue
        rest = parts[k:]
        if not rest:
            return True
        path = ROOT / Path(*mod.split("."))
        src = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        tree = ast.parse(src.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        names |= {
            t.id
            for n in ast.walk(tree)
            if isinstance(n, (ast.Assign, ast.AnnAssign))
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            if isinstance(t, ast.Name)
        }
        names |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return rest[0] in names or (_module_exists(f"{mod}.{rest[0]}"))
    return False


def named_paths() -> list[tuple[str, str]]:
    """(where, path) of every module or file path named in the docs and the package's sources."""
    texts = [
        ROOT / "README.md",
        ROOT / "data" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted(PKG.rglob("*.py")),
    ]
    found = []
    for f in texts:
        text = f.read_text()
        for m in DOTTED.finditer(text):
            found.append((f"{f.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", m.group().rstrip(".")))
        for m in FILES.finditer(text):
            found.append((f"{f.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}", m.group()))
    return found


def test_every_named_module_path_resolves():
    bad = []
    for where, path in named_paths():
        ok = (ROOT / path).is_file() if path.endswith(".py") else resolves(path)
        if not ok:
            bad.append(f"{where}: {path}")
    assert not bad, "names that do not resolve:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "path, ok",
    [
        ("forward_influence.analysis.family", True),
        ("forward_influence.analysis.family.tables", True),
        ("forward_influence.compress.InfoKV", True),
        ("forward_influence.fisher", False),
        ("forward_influence.analysis.family.no_such_thing", False),
    ],
)
def test_resolution_has_power(path, ok):
    assert resolves(path) is ok


def test_the_scan_finds_names():
    paths = {p for _, p in named_paths()}
    assert "forward_influence.measurement.signal_registry" in paths and len(paths) > 50
    assert importlib.util.find_spec("forward_influence") is not None
