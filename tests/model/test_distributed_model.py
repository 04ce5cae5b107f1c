"""fi-measure and fi-bench on a local Ray cluster (issue 19): the tests on the embedded SmolLM2-135M; the fast ones and
the topic's notes are in tests/unit/test_distributed.py."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from helpers.distributed import ROOT, TABLES, TEXT, assert_same_tables, cluster, docs, ray, text, write_docs  # noqa: F401, F811

from forward_influence.store.results import MeasureResult  # noqa: E402


@pytest.mark.parametrize("command", ["fi-measure", "fi-bench"])
def test_cli_on_the_embedded_model_equals_single_process(command, cluster, smollm, tmp_path, monkeypatch, capsys):
    from forward_influence.cli import bench
    from forward_influence.cli import measure as cli_measure

    # Workers and this process with the same thread count (one each: two CPU actors fit the 2-CPU cluster).
    monkeypatch.setenv("FI_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    docs = write_docs(tmp_path / "docs.jsonl", {f"d{i}": text(i, 4 + i) for i in range(3)})
    if command == "fi-measure":
        argv = [
            "--doc",
            str(docs),
            "--n-prefix",
            "32,48",
            "--n-future",
            "16",
            "--stride",
            "8",
            "--window",
            "8",
            "--batch-size",
            "4",
            "--no-words",
            "--no-report",
        ]
    else:
        argv = [
            "--task",
            "fidelity",
            "--doc",
            str(docs),
            "--methods",
            "full,snapkv,infokv",
            "--budgets",
            "0.5",
            "--n-prefix",
            "48",
            "--n-future",
            "16",
            "--bootstrap",
            "50",
            "--no-report",
        ]
    entry = cli_measure.entry if command == "fi-measure" else bench.entry
    try:
        for name, extra in (("one", []), ("ray", ["--ray", "local:2"])):
            with pytest.raises(SystemExit) as e:
                entry([*argv, "--out", str(tmp_path / name), *extra])
            assert e.value.code == 0, capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)  # the CLI set it from FI_NUM_THREADS
    meta = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert (
        meta["execution"]["backend"] == "ray"
        and meta["execution"]["actor"] == "CPU"
        and meta["execution"]["workers"] == 2
    )
    assert meta["model"] == json.loads((tmp_path / "one" / "run.json").read_text())["model"]
    if command == "fi-measure":
        assert_same_tables(MeasureResult.load(tmp_path / "one"), MeasureResult.load(tmp_path / "ray"))
    else:
        a, b = (pd.read_parquet(tmp_path / n / "results.parquet").drop(columns="seconds") for n in ("one", "ray"))
        pd.testing.assert_frame_equal(a, b, check_exact=True)
