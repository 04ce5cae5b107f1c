"""fi-measure on the embedded SmolLM2-135M: end to end with a schema check, resume after kill -9, bad input (the fast
tests are in tests/unit/test_cli.py)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import FP32_PRECISION_FLOOR

from forward_influence.cli.measure import entry
from forward_influence.measurement.collector import registered
from forward_influence.store import schema
from forward_influence.store.results import SCHEMA_VERSION, MeasureResult

SMALL = ["--n-prefix", "48", "--n-future", "24", "--stride", "6", "--window", "8"]
WORD_COLUMNS = {"word_idx", "word", "upos", "tag", "word_class", "finite_verb", "is_word_start"}
TOKENS_COLUMNS = (
    set(schema.REQUIRED_COLUMNS["tokens"])
    | {"text"}
    | set(schema.signal_names(registered(), schema.TOKEN))
    | WORD_COLUMNS
)
INFLUENCE_COLUMNS = list(schema.INFLUENCE_COLUMNS)
SOURCE_SIGNAL_COLUMNS = [*schema.REQUIRED_COLUMNS["source_signals"], *schema.signal_names(registered(), schema.SOURCE)]
SUMMARY_COLUMNS = set(schema.REQUIRED_COLUMNS["summary"])


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    text = (
        "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
        "France. "
        "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under their leader "
        "Rollo, "
        "agreed to swear fealty to King Charles III of West Francia. "
    )
    p = d / "docs.jsonl"
    p.write_text("\n".join(json.dumps({"id": f"d{i}", "text": text * (2 + i % 2)}) for i in range(2)) + "\n")
    return p


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        entry(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def short_doc(tmp_path):
    p = tmp_path / "short.json"
    p.write_text(json.dumps({"id": "tiny", "text": "Too short."}))
    return p


BAD = {
    "missing-file": (lambda t: ["--doc", str(t / "nope.json")], "not found"),
    "malformed-json": (
        lambda t: ["--doc", str((t / "bad.json", (t / "bad.json").write_text("{oops"))[0])],
        "not valid JSON",
    ),
    "empty-doc": (
        lambda t: ["--doc", str((t / "e.json", (t / "e.json").write_text('{"id": "e", "text": ""}'))[0])],
        "empty",
    ),
    "too-short": (lambda t: ["--doc", str(short_doc(t))], "tokens, fewer than"),
    "unknown-model": (lambda t: ["--model", "gpt-17"], "smollm2-135m"),
    "positions-out-of-range": (lambda t: ["--positions", "5000,6000"], "out of range"),
    "unwritable-out": (
        lambda t: ["--out", str((t / "file", (t / "file").write_text("x"))[0] / "sub")],
        "not a directory",
    ),
    "cuda-without-gpu": (lambda t: ["--device", "cuda"], "no CUDA GPU"),
    "kv-head-without-layer": (lambda t: ["--kv-head", "1"], "needs --layer"),
    "ray-no-workers": (lambda t: ["--ray", "local:0"], "needs N >= 1 workers"),
}


def test_cli_end_to_end_schema(tmp_path, docs, smollm, capsys):
    out = tmp_path / "run"
    umask = os.umask(0o022)
    try:
        code, stdout, err = run(["--doc", str(docs), "--out", str(out), *SMALL], capsys)
    finally:
        os.umask(umask)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE((out / "analysis").stat().st_mode) == 0o755
    assert "2 documents" in stdout and "Top sources by Forward Influence" in stdout
    res = MeasureResult.load(out)
    assert TOKENS_COLUMNS <= set(res.tokens.columns)
    assert list(res.influence.columns) == INFLUENCE_COLUMNS
    assert SUMMARY_COLUMNS <= set(res.summary.columns)
    assert len(res.summary) == 2 * len(range(0, 48, 6))
    assert (res.influence.kl >= 0).all()
    assert (res.influence.distance == res.influence.target_pos - res.influence.source_pos).all()
    assert res.influence.target_pos.between(48, 48 + 24 - 1).all()
    assert (res.influence.distance_tau == res.influence.target_pos - 48).all()
    assert list(res.source_signals.columns) == SOURCE_SIGNAL_COLUMNS
    assert len(res.source_signals) == 2 * 48 and (res.source_signals.tau == 48).all()  # every prefix token, per split
    assert np.isfinite(res.source_signals[["attn_snapkv", "attn_h2o"]].to_numpy()).all()
    np.testing.assert_allclose(
        res.summary.fi_total, res.summary.fi_near + res.summary.fi_mid + res.summary.fi_far, rtol=1e-9
    )
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "complete" and meta["schema_version"] == SCHEMA_VERSION
    assert meta["model"]["revision"].startswith("sha256:")
    assert {"torch", "transformers", "numpy"} <= set(meta["versions"])
    assert meta["noise_floor_max"] < 1e-9
    assert 0 <= meta["precision_floor_median"] <= meta["precision_floor_max"] < FP32_PRECISION_FLOOR
    assert meta["share_below_precision_floor"] < 0.25 and "precision floor" not in err  # fp32: no warning
    assert {"precision_floor_median", "share_below_precision_floor"} <= set(meta["per_document"][0])
    assert meta["config"]["n_prefix"] == [48]
    tl = pd.read_parquet(out / "token_layers.parquet")
    assert len(tl) == len(res.tokens) * 30 * 3 and (tl.split_pos == 48).all()
    assert not (out / ".parts").exists()
    assert "fi-measure: the study's claims on this run" in stdout and (out / "analysis" / "report.html").is_file()


def test_sliding_mode_and_layer_ablation(tmp_path, docs, smollm, capsys):
    out = tmp_path / "sl"
    code, _, err = run(
        [
            "--doc",
            str(docs),
            "--out",
            str(out),
            "--mode",
            "sliding",
            "--delay",
            "4",
            "--horizon",
            "16",
            "--positions",
            "0,5,20",
            "--layer",
            "3",
            "--max-docs",
            "1",
            "--no-words",
        ],
        capsys,
    )
    assert code == 0, err
    assert "no report (the run has fewer than 4 measured sources" in err and not (out / "analysis").exists()
    res = MeasureResult.load(out)
    assert sorted(res.summary.source_pos) == [0, 5, 20]
    assert res.influence.distance.between(4, 4 + 16 - 1).all() and res.influence.distance_tau.between(0, 15).all()
    assert res.meta["config"]["delay"] == 4
    src = res.source_signals
    assert (src.tau == src.pos + 4).all() and src.split_pos.isna().all() and len(src) == len(res.tokens) - 4 + 1
    assert res.influence.split_pos.isna().all() and (res.influence.layer == 3).all()


def test_resume_after_kill_equals_uninterrupted(tmp_path, docs, smollm):
    full, killed = tmp_path / "full", tmp_path / "killed"
    cmd = [
        sys.executable,
        "-c",
        "from forward_influence.cli.measure import entry; entry()",
        "--doc",
        str(docs),
        *SMALL,
        "--words",
    ]
    env = {**os.environ, "FI_NUM_THREADS": "1"}
    subprocess.run([*cmd, "--out", str(full)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = killed / ".parts" / "00000" / "meta.json"
    deadline = time.time() + 300
    while not part.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert part.exists(), "first document was checkpointed before the kill"
    assert not (killed / "tokens.parquet").exists()
    r = subprocess.run([*cmd, "--out", str(killed)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = MeasureResult.load(full), MeasureResult.load(killed)
    for name in ("tokens", "influence", "summary", "source_signals", "token_layers"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert any(d.get("resumed") for d in b.meta["per_document"])


def test_different_config_into_used_dir_refused(tmp_path, docs, smollm, capsys):
    out = tmp_path / "r"
    assert run(["--doc", str(docs), "--out", str(out), "--max-docs", "1", *SMALL], capsys)[0] == 0
    code, _, err = run(["--doc", str(docs), "--out", str(out), "--max-docs", "1", *SMALL[:-2], "--window", "4"], capsys)
    assert code == 2 and "different config" in err and "window" in err


@pytest.mark.parametrize("case", BAD)
def test_bad_input_one_line_no_output(case, tmp_path, docs, smollm, capsys):
    make, message = BAD[case]
    extra = make(tmp_path)
    out = tmp_path / "out"
    argv = ["--doc", str(docs), "--out", str(out), "--max-docs", "1", *SMALL, *extra]
    code, _, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fi-measure: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err
    assert not out.exists(), "no partial output"
