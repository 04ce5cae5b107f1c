"""fi-measure from a shell: the CLI as a subprocess (its bad-input contract: one line, exit 2, no traceback); the rest
is in tests/unit/test_cli.py and tests/model/test_cli_model.py."""

from __future__ import annotations

import subprocess
import sys


def test_error_from_shell_has_no_traceback(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "forward_influence.cli.measure",
            "--doc",
            str(tmp_path / "missing.jsonl"),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
