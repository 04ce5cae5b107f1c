"""fi-bench: task generators, scoring, loaders, the runner (resume, FI validation), the CLI: the tests end to end
(subprocesses, clusters, notebooks); the fast ones and the topic's notes are in tests/unit/test_bench.py."""

from __future__ import annotations

import subprocess
import sys


def test_cli_bad_input_one_line(tmp_path):
    for args, msg in [
        (["--task", "fidelity", "--methods", "nope"], "unknown method"),
        (["--task", "fidelity", "--budgets", "2"], "fractions of the cache kept"),
        (["--task", "ifeval"], "needs --ifeval-data"),
    ]:
        p = subprocess.run(
            [sys.executable, "-m", "forward_influence.cli.bench", "--out", str(tmp_path / "o"), *args],
            capture_output=True,
            text=True,
        )
        assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not (tmp_path / "o").exists()
