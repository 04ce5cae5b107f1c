"""Every command the README and docs/ show is known to scripts/check_docs.py, and parses.

``scripts/check_docs.py`` runs the commands in a fresh clone (minutes; not part of the suite). These checks
are the cheap half, in the fast tier: each shell line of a fenced block is a command the checker collects
(a new kind of command must get a rule there), every ``fi-*`` command — the skipped GPU and cluster ones
included — parses with the CLI's own parser into a valid config, as written and with the checker's small
settings, and every flag given to a script is one the script defines.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

from forward_influence.bench.config import BenchConfig
from forward_influence.cli import analyze as cli_analyze
from forward_influence.cli import bench as cli_bench
from forward_influence.cli import distill as cli_distill
from forward_influence.cli import measure as cli_measure
from forward_influence.config import MeasureConfig
from forward_influence.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_docs", ROOT / "scripts" / "check_docs.py")
check_docs = sys.modules.setdefault("check_docs", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(check_docs)
COMMANDS = check_docs.collect()
SHELL = [c for c in COMMANDS if c.kind == "shell"]
PARSERS = {
    "fi-measure": (cli_measure.build_parser, MeasureConfig),
    "fi-bench": (cli_bench.build_parser, BenchConfig),
    "fi-analyze": (cli_analyze.build_parser, None),
    "fi-distill": (cli_distill.build_parser, None),
}


def argv_of(text: str) -> list[str]:
    return shlex.split(text.split("|")[0])


def test_every_block_line_is_a_collected_command():
    collected = {c.text for c in SHELL}
    missed = []
    for page in check_docs.PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        for m in re.finditer(r"^```(?:bash|sh)\n(.*?)^```", text, re.S | re.M):
            joined = re.sub(r"\\\n\s*", " ", m.group(1))
            for line in joined.splitlines():
                cmd = " ".join(check_docs.strip_comment(line).split())
                if cmd and not any(" ".join(c.split()) == cmd for c in collected):
                    missed.append(f"{page}: {cmd}")
    assert not missed, f"commands scripts/check_docs.py does not collect (add a rule): {missed}"


def test_the_pages_have_the_commands_the_issue_names():
    texts = {c.text for c in SHELL}
    assert {"make demo", "make test", "make lab"} <= texts
    assert any(t.startswith("fi-measure --generate") for t in texts)
    assert any("scripts/headline_claims.py" in t for t in texts)
    assert {c.page for c in COMMANDS if c.kind == "python"} >= {"docs/usage.md", "docs/compressors.md"}  # one per page
    actions = {c.action for c in COMMANDS}
    assert actions == {"run", "small", "skip", "lab"}, actions
    # only GPU, hub, multi-machine, templates and the suite itself are skipped
    for c in COMMANDS:
        if c.action == "skip":
            assert re.search(
                r"GPU|hub model|across machines|template|suite itself|checker itself|one by one|in prose", c.extra
            ), c


@pytest.mark.parametrize("cmd", [c for c in SHELL if c.text.split()[0] in PARSERS], ids=lambda c: f"{c.page}:{c.line}")
def test_cli_commands_parse_into_a_valid_config(cmd):
    for text in {cmd.text, cmd.argv_text}:
        argv = argv_of(text)
        build, cls = PARSERS[argv[0]]
        args = build().parse_args(argv[1:])  # argparse exits 2 on an unknown or malformed flag
        if cls is None:
            continue
        kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        try:
            cls(**kw)
        except InputError as e:  # only an input a previous command of the page writes may be missing
            assert "runs/" in str(e), (text, e)


@pytest.mark.parametrize("cmd", [c for c in SHELL if "scripts/" in c.text], ids=lambda c: f"{c.page}:{c.line}")
def test_script_flags_exist(cmd):
    argv = argv_of(cmd.argv_text)
    script = next(a for a in argv if a.startswith("scripts/"))
    source = (ROOT / script).read_text()
    flags = [a.split("=")[0] for a in argv if a.startswith("--")]
    unknown = [f for f in flags if f'"{f}"' not in source]
    assert not unknown, f"{script} defines no {unknown}"


def _defined_names(module: str) -> set[str]:
    """Top-level names a module's source defines or imports (for a module whose optional dependency,
    e.g. kvpress, is not installed here, so it cannot be imported)."""
    import ast

    path = ROOT / (module.replace(".", "/") + ".py")
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _missing_imports(source: str, where: str) -> list[str]:
    import ast
    import importlib

    missing = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("forward_influence")):
            continue
        try:
            module = importlib.import_module(node.module)
            has = lambda name, m=module: hasattr(m, name)  # noqa: E731
        except ImportError as e:  # an optional dependency missing here: read the source instead
            assert (ROOT / (node.module.replace(".", "/") + ".py")).is_file(), (where, node.module, e)
            has = _defined_names(node.module).__contains__
        for alias in node.names:
            if not has(alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                missing.append(f"{where}: from {node.module} import {alias.name}")
    return missing


def test_scripts_and_doc_examples_import_names_that_exist():
    """The scripts and the Python examples the docs show import only what the package has (a moved
    module breaks them silently: nothing else in the suite imports scripts/ or runs the pages)."""
    missing = [
        m
        for script in sorted((ROOT / "scripts").glob("*.py"))
        for m in _missing_imports(script.read_text(), script.name)
    ]
    missing += [m for c in COMMANDS if c.kind == "python" for m in _missing_imports(c.text, f"{c.page}:{c.line}")]
    assert not missing, missing
