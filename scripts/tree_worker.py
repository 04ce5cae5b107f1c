"""A worker process importing ``forward_influence`` from a given source tree, for benchmarks that time
two trees in turns (``bench_versus.py``, ``bench_signals.py``): it runs ``code`` with ``argv``, says
``ready`` once set up, then answers one line per line it is sent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def start_worker(
    tree: Path, code: str, argv: list[str], name: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``code`` in ``tree`` (``PYTHONPATH``) and wait for its ``ready`` line."""
    p = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=tree,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(tree)},
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    line = p.stdout.readline().strip()
    if line != "ready":
        raise SystemExit(f"{name}: the worker in {tree} did not start (said {line!r})")
    return p


def ask(p: subprocess.Popen) -> str:
    """One round: send a line, return the worker's answer."""
    p.stdin.write("go\n")
    p.stdin.flush()
    return p.stdout.readline()
