"""The architecture, checked: import contracts (``lint-imports``, pyproject.toml), what imports cannot
show (transformers' forward keyword arguments read, cache layers written, outside ``forward_influence.hf``),
the package staying torch-free on import, and module / function sizes."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "forward_influence"
HF = PKG / "hf"
# keyword arguments transformers passes to attention modules / forwards; reading them ties code to its internals
FORWARD_KWARGS = {"past_key_values", "cache", "cache_position", "position_embeddings"}
CACHE_LAYER_ATTRS = {"keys", "values", "key_cache", "value_cache"}
# Sizes in statements (ast.stmt nodes, nested ones included, docstrings not), so that formatting cannot be
# traded for packing code onto long lines. Maxima when these were set: 247 (hf/attention.py), 59 (_ablated_attention).
MAX_MODULE_STATEMENTS = 260
MAX_FUNCTION_STATEMENTS = 64


def _modules(outside_hf: bool = False) -> list[Path]:
    return [p for p in sorted(PKG.rglob("*.py")) if not (outside_hf and HF in p.parents)]


def _reads_forward_kwarg(node: ast.AST) -> str | None:
    """``kwargs["past_key_values"]``, ``kwargs.get("cache_position")``, ``kwargs.pop(...)``."""
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in FORWARD_KWARGS:
        return node.slice.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("get", "pop")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value in FORWARD_KWARGS
    ):
        return node.args[0].value
    return None


def _writes_cache_layer(node: ast.AST) -> bool:
    """An assignment to ``<x>.layers[i].keys`` / ``.values`` (or the old ``key_cache[i]``)."""
    targets = (
        node.targets
        if isinstance(node, ast.Assign)
        else [node.target]
        if isinstance(node, (ast.AugAssign, ast.AnnAssign))
        else []
    )
    for t in targets:
        while isinstance(t, ast.Subscript):
            t = t.value
        if isinstance(t, ast.Attribute) and t.attr in CACHE_LAYER_ATTRS:
            base = t.value
            if (
                isinstance(base, ast.Subscript)
                and isinstance(base.value, ast.Attribute)
                and base.value.attr == "layers"
            ):
                return True
            if t.attr in ("key_cache", "value_cache"):
                return True
    return False


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "lint-imports not installed: pip install -e '.[test]'"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_only_hf_reads_forward_kwargs_or_writes_cache_layers():
    found = []
    for path in _modules(outside_hf=True):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            key = _reads_forward_kwarg(node)
            if key:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} reads {key!r}")
            if _writes_cache_layer(node):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} writes a cache layer")
    assert not found, "outside forward_influence/hf:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("kwargs['past_key_values']", "past_key_values"),
        ("kw.get('cache_position')", "cache_position"),
        ("a['position_embeddings']", "position_embeddings"),
        ("kwargs['input_ids']", None),
        ("d.get('x')", None),
    ],
)
def test_forward_kwarg_rule_has_power(source, expected):
    node = ast.parse(source, mode="eval").body
    assert _reads_forward_kwarg(node) == expected


@pytest.mark.parametrize(
    "source, expected",
    [
        ("cache.layers[l].keys = k", True),
        ("cache.layers[0].values[..., :3] = v", True),
        ("c.key_cache[0] = k", True),
        ("self.keys = k", False),
        ("x = cache.layers[l].keys", False),
    ],
)
def test_cache_write_rule_has_power(source, expected):
    assert _writes_cache_layer(ast.parse(source).body[0]) is expected


def test_package_and_torch_free_layers_import_without_torch():
    code = (
        "import sys, forward_influence, forward_influence.analysis.report, forward_influence.store.results, "
        "forward_influence.analysis.analyze; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_lazy_exports_resolve():
    import forward_influence as fi

    for name in fi.__all__:
        assert getattr(fi, name).__name__ == name
    with pytest.raises(AttributeError):
        fi.no_such_name  # noqa: B018


def statements(node: ast.AST) -> int:
    """``ast.stmt`` nodes under ``node`` (itself included when it is one), docstrings excluded."""
    n = 0
    for sub in ast.walk(node):
        if isinstance(sub, ast.stmt):
            is_doc = (
                isinstance(sub, ast.Expr) and isinstance(sub.value, ast.Constant) and isinstance(sub.value.value, str)
            )
            n += not is_doc
    return n


def test_statement_count_has_power():
    func = ast.parse("def f():\n    'doc.'\n    if x:\n        y = 1\n    return y\n")
    assert statements(func) == 4  # def, if, assignment, return; not the docstring
    assert statements(ast.parse("a = 1; b = 2; c = 3")) == 3  # one line, three statements
    packed = ast.parse("def f(x):\n    return [y for y in x if y]\n")
    assert statements(packed) == statements(
        ast.parse("def f(x):\n    return [\n        y\n        for y in x\n        if y\n    ]\n")
    )


def test_module_and_function_sizes():
    big, long = [], []
    for path in _modules():
        tree = ast.parse(path.read_text())
        if statements(tree) > MAX_MODULE_STATEMENTS:
            big.append(f"{path.relative_to(ROOT)}: {statements(tree)} statements")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = statements(node) - 1
                if n > MAX_FUNCTION_STATEMENTS:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} statements")
    assert not big and not long, "\n".join(big + long)


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff not installed: pip install -e '.[test]'"
    return subprocess.run(
        [exe, *args, "forward_influence", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_lint_passes():
    out = _ruff("check", "--no-cache")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_ruff_format_is_applied():
    out = _ruff("format", "--check", "--no-cache")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def import_cycles(graph) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's
    strongly connected components of ``graph``, a grimp import graph; lazy imports count)."""
    modules = sorted(graph.modules)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(m: str) -> None:  # recursion depth is bounded by the package's module count
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in graph.find_modules_directly_imported_by(m):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            group = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                group.append(n)
                if n == m:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for m in modules:
        if m not in index:
            visit(m)
    return groups


def test_no_two_modules_import_each_other():
    import grimp

    graph = grimp.build_graph("forward_influence", cache_dir=None)
    cycles = import_cycles(graph)
    assert cycles == [], "modules that import each other (directly or through others):\n" + "\n".join(map(str, cycles))


def test_import_cycle_check_has_power():
    import grimp

    graph = grimp.ImportGraph()
    for m in ("p.a", "p.b", "p.c", "p.d"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")  # a -> b -> c -> a
    graph.add_import(importer="p.d", imported="p.a")
    assert import_cycles(graph) == [["p.a", "p.b", "p.c"]]
