"""fi-bench: task generators, scoring, loaders, the runner (resume, FI validation), the CLI: the tests on the embedded
SmolLM2-135M; the fast ones and the topic's notes are in tests/unit/test_bench.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from forward_influence.bench import BenchConfig, run_bench
from forward_influence.errors import InputError
from forward_influence.measurement import synthetic
from forward_influence.store.results import SCHEMA_VERSION

LENGTH_TOL = 0.15  # generated context length vs the target, relative
ABS_TOL_KL = 1e-9


def test_generated_lengths_in_tokens(smollm):
    for length in (1024, 2048):
        ex = synthetic.make_example("passkey", length, 0.5, seed=0, tokenizer=smollm.tokenizer)
        n = len(smollm.tokenizer(ex.context)["input_ids"])
        assert abs(n - length) / length <= LENGTH_TOL


# ----------------------------------------------------------------- end to end
def test_fidelity_run_full_is_exact_and_resumes(smollm, tmp_path, monkeypatch):
    from forward_influence.bench import runner

    cfg = BenchConfig(
        task="fidelity",
        methods=("full", "snapkv", "infokv", "h2o"),
        budgets=(0.25, 0.5),
        n_prefix=96,
        n_future=16,
        n_samples=2,
        out=str(tmp_path / "b"),
        progress=False,
        bootstrap=200,
    )
    calls = []
    real = runner.run_prefill_sample

    def failing(*a, **k):
        calls.append(a[2].sample_id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(runner, "run_prefill_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, model=smollm)
    assert not (tmp_path / "b" / "results.parquet").exists(), "no results before the run completes"
    monkeypatch.setattr(runner, "run_prefill_sample", lambda *a, **k: (calls.append(a[2].sample_id), real(*a, **k))[1])
    res = run_bench(cfg, model=smollm)
    assert calls[2:] == [calls[1]], "the finished sample is read back, the interrupted one rerun"
    assert len(res) == 2 * 4 * 2
    full = res[res.method == "full"]
    assert (full.kl.abs() <= ABS_TOL_KL).all() and (full.delta_nll.abs() <= ABS_TOL_KL).all()
    assert (res[res.method != "full"].kl > 0).all()
    fresh = run_bench(
        BenchConfig(**{**cfg.to_dict(), "out": None, "methods": tuple(cfg.methods), "budgets": tuple(cfg.budgets)}),
        model=smollm,
    )
    pd.testing.assert_frame_equal(res.drop(columns="seconds"), fresh.drop(columns="seconds"))
    meta = json.loads((tmp_path / "b" / "run.json").read_text())
    assert (
        meta["status"] == "complete"
        and meta["model"]
        and meta["versions"]["torch"]
        and meta["schema_version"] == SCHEMA_VERSION
    )
    from forward_influence.bench.report import write_report

    html = write_report(tmp_path / "b").read_text()
    assert html.count("data:image/png;base64,") >= 2


def test_validation_against_a_measured_run(smollm, tmp_path):
    from forward_influence import MeasureConfig
    from forward_influence.measurement.run import measure

    fi_dir = tmp_path / "fi"
    measure(
        MeasureConfig(
            n_prefix=(64,), n_future=16, max_docs=2, out=str(fi_dir), words=False, progress=False, report=False
        ),
        model=smollm,
    )
    from forward_influence.store.results import MeasureResult

    docs = tuple(MeasureResult.load(fi_dir).summary["doc_id"].unique())
    cfg = BenchConfig(
        task="fidelity",
        methods=("full", "snapkv", "random", "fi_oracle", "distilled"),
        budgets=(0.25,),
        n_prefix=64,
        n_future=16,
        far=8,
        doc_ids=docs[::-1],  # the measured documents, named (file order is kept)
        fi_run=str(fi_dir),
        out=str(tmp_path / "v"),
        progress=False,
        report=False,
        bootstrap=200,
    )
    res = run_bench(cfg, model=smollm)
    assert list(pd.unique(res.sample_id)) == list(docs)
    assert res.kl_far.notna().all() and (res[res.method == "full"].kl_far.abs() <= ABS_TOL_KL).all()
    # the gap closed by distilled, from the document means of this run's own rows
    gap = pd.read_parquet(tmp_path / "v" / "gap_closed.parquet").set_index("metric")
    assert set(gap.index) == {"kl", "kl_far"} and (gap["n"] == 2).all()
    for metric, g in gap.iterrows():
        m = res.groupby("method")[metric].mean()
        best = m[["snapkv", "random"]].min()
        assert g["best"] == m[["snapkv", "random"]].idxmin()
        assert g["gap_closed"] == pytest.approx((best - m["distilled"]) / (best - m["fi_oracle"]), rel=1e-9)
    share = res.groupby("method").fi_kept_share.mean()
    assert share["fi_oracle"] >= share["snapkv"] and share["fi_oracle"] >= share["random"]
    assert share["full"] == pytest.approx(1.0)
    from forward_influence.bench.report import additivity

    d, fit = additivity(res)
    assert (
        fit["n"] == len(d) >= 4
        and set(d.method) <= {"snapkv", "random", "fi_oracle", "distilled"}
        and np.isfinite(fit["spearman"])
    )
    with pytest.raises(InputError, match="--n-prefix 64 --n-future 16"):
        run_bench(BenchConfig(task="fidelity", n_prefix=128, fi_run=str(fi_dir)), model=smollm)


def test_retrieval_and_qa_end_to_end(smollm):
    cfg = BenchConfig(
        task="retrieval",
        methods=("full", "streaming_llm"),
        budgets=(0.5,),
        lengths=(256,),
        depths=(0.5,),
        kinds=("passkey", "vartrack"),
        progress=False,
        bootstrap=100,
    )
    res = run_bench(cfg, model=smollm)
    assert set(res.kind) == {"passkey", "vartrack"} and {"exact_match", "nll", "agrees_full"} <= set(res.columns)
    assert (res[res.method == "full"].agrees_full == 1.0).all()
    qa = run_bench(
        BenchConfig(
            task="qa",
            methods=("full", "snapkv"),
            budgets=(0.3,),
            n_samples=2,
            max_context=256,
            progress=False,
            bootstrap=100,
        ),
        model=smollm,
    )
    assert len(qa) == 4 and (qa.exact_match <= qa.contains).all(), "an answer that starts with the gold contains it"
    assert (qa[qa.method == "full"].agrees_full == 1.0).all()


def test_ifeval_decoding_end_to_end(smollm, tmp_path):
    data = tmp_path / "ifeval.jsonl"
    rows = [
        {
            "key": 1,
            "prompt": "Write two sentences about the sea. Do not use any commas.",
            "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [{}],
        },
        {
            "key": 2,
            "prompt": "Describe a cat in all lowercase letters.",
            "instruction_id_list": ["change_case:english_lowercase"],
            "kwargs": [{}],
        },
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = BenchConfig(
        task="ifeval",
        ifeval_data=str(data),
        methods=("full", "snapkv", "infokv"),
        budgets=(24.0,),
        max_new_tokens=40,
        interval=8,
        progress=False,
        bootstrap=100,
    )
    res = run_bench(cfg, model=smollm)
    assert len(res) == 2 * 3
    full = res[res.method == "full"]
    assert (full.agree_tokens == 1.0).all() and (full.agree_prefix == 1.0).all()
    assert res.new_tokens.between(1, 40).all()
    # prompt-level = every instruction followed; loose also tries relaxed variants of the same response
    assert (res.prompt_strict <= res.inst_strict).all() and (res.prompt_strict <= res.prompt_loose).all()
    assert (res.inst_strict <= res.inst_loose).all()
