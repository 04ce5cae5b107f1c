"""fi-measure end to end on the embedded model, and its bad-input contract (tiers 1-3: each test marked by
what it loads, no module-wide mark)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from forward_influence.cli.measure import entry


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        entry(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_error_from_shell_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "forward_influence.cli.measure", "--doc", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
