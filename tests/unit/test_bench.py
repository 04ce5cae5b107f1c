"""fi-bench: task generators, scoring, loaders, the runner (resume, FI validation), the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forward_influence.bench import BenchConfig
from forward_influence.bench.loaders import load_aime2024, load_livecodebench, load_longreason
from forward_influence.bench.summary import paired_interval, summarize_bench
from forward_influence.compress import get_compressor
from forward_influence.errors import InputError
from forward_influence.measurement import synthetic

DEPTH_TOL = 0.1  # needle position (fraction of the context) vs the asked depth


# ----------------------------------------------------------------- generators
@pytest.mark.parametrize("kind", synthetic.KINDS)
def test_generators_are_deterministic_and_hold_their_answer(kind):
    a = synthetic.make_example(kind, 800, 0.3, seed=7)
    b = synthetic.make_example(kind, 800, 0.3, seed=7)
    c = synthetic.make_example(kind, 800, 0.3, seed=8)
    assert a == b
    assert a.answer != c.answer or a.context != c.context
    assert a.answer.strip() in a.context
    assert a.answer.strip() not in a.question


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9])
def test_passkey_depth(depth):
    ex = synthetic.make_example("passkey", 2000, depth, seed=1)
    where = ex.context.index("The pass key is") / len(ex.context)
    assert abs(where - depth) <= DEPTH_TOL


def test_multikey_distractors_and_uuids():
    ex = synthetic.make_example("multikey", 1500, 0.5, seed=3, n_keys=5, value_type="uuid")
    assert ex.context.count("special magic uuids for") == 5
    assert len(ex.answer.strip()) == 36 and ex.meta["key"] in ex.question


def test_vartrack_chain_resolves_to_the_answer():
    ex = synthetic.make_example("vartrack", 1500, 0.2, seed=4, hops=3)
    chain = ex.meta["chain"]
    assert f"VAR {chain[0]} ={ex.answer}." in ex.context
    for a, b in zip(chain, chain[1:]):
        assert f"VAR {b} = VAR {a}." in ex.context


def test_generator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="valid: passkey, multikey, vartrack"):
        synthetic.make_example("needle", 100, 0.5, seed=0)
    with pytest.raises(ValueError, match="depth"):
        synthetic.make_example("passkey", 100, 1.5, seed=0)


# ----------------------------------------------------------------- scoring
def test_paired_interval_and_summary_on_hand_made_results():
    rows = []
    for i in range(6):
        rows += [
            {"task": "fidelity", "sample_id": str(i), "method": "full", "budget": 0.2, "kl": 0.0, "delta_nll": 0.0},
            {
                "task": "fidelity",
                "sample_id": str(i),
                "method": "snapkv",
                "budget": 0.2,
                "kl": 0.1 + i,
                "delta_nll": 0.2,
            },
            {
                "task": "fidelity",
                "sample_id": str(i),
                "method": "infokv",
                "budget": 0.2,
                "kl": 0.05 + i,
                "delta_nll": 0.1,
            },
        ]
    s = summarize_bench(pd.DataFrame(rows), 500, 0)
    r = s[(s.metric == "kl") & (s.method == "infokv")].iloc[0]
    assert r["mean"] == pytest.approx(2.55) and r["vs_snapkv"] == pytest.approx(-0.05)
    assert r["vs_snapkv_lo"] == pytest.approx(-0.05) and r["vs_snapkv_hi"] == pytest.approx(
        -0.05
    )  # constant difference
    assert r["vs_full"] == pytest.approx(2.55) and r["vs_full_lo"] < r["vs_full"] < r["vs_full_hi"]
    m, lo, hi = paired_interval(np.array([np.nan, 1.0, 3.0]), None, 200, np.random.default_rng(0))
    assert m == 2.0 and 1.0 <= lo <= hi <= 3.0


def test_ifeval_checkers_on_hand_made_responses():
    pytest.importorskip("lm_eval")
    from forward_influence.bench.ifeval import check_following

    row = {
        "key": 1,
        "prompt": "Say hi without commas.",
        "instruction_id_list": ["punctuation:no_comma"],
        "kwargs": [{}],
    }
    assert check_following(row, "Hi there my friend")["prompt_strict"] == 1.0
    assert check_following(row, "Hi, there")["prompt_strict"] == 0.0
    row = {
        "key": 2,
        "prompt": "Answer in at least 5 sentences.",
        "instruction_id_list": ["length_constraints:number_sentences"],
        "kwargs": [{"relation": "at least", "num_sentences": 5}],
    }
    assert check_following(row, "One. Two. Three. Four. Five. Six.")["prompt_strict"] == 1.0  # needs punkt_tab
    assert check_following(row, "Just one sentence.")["prompt_strict"] == 0.0


# ----------------------------------------------------------------- loaders
def test_loaders_on_small_files(tmp_path):
    lr = tmp_path / "longreason.jsonl"
    lr.write_text(
        json.dumps(
            {
                "example_idx": 3,
                "background_story": "Ann has two cats.",
                "final_inquiry": "How many cats? (A) 1 (B) 2",
                "answer": "B",
            }
        )
        + "\n"
    )
    (p,) = load_longreason(lr)
    assert p.problem_id == "3" and "two cats" in p.prompt and "How many" in p.prompt and p.answer == "B"
    aime = tmp_path / "aime.json"
    aime.write_text(json.dumps([{"ID": "2024-I-1", "Problem": "Find x.", "Answer": 204}]))
    (p,) = load_aime2024(aime)
    assert (p.problem_id, p.prompt, p.answer) == ("2024-I-1", "Find x.", "204")
    lcb = tmp_path / "lcb.jsonl"
    lcb.write_text(
        json.dumps(
            {
                "question_id": "abc1",
                "question_content": "Print 1.",
                "starter_code": "def f():",
                "public_test_cases": json.dumps([{"input": "", "output": "1"}]),
                "difficulty": "easy",
            }
        )
        + "\n"
    )
    (p,) = load_livecodebench(lcb)
    assert p.extra["tests"] == [{"input": "", "output": "1"}] and "Starter code" in p.prompt
    bad = tmp_path / "bad.json"
    bad.write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_aime2024(bad)
    with pytest.raises(InputError, match="not found"):
        load_aime2024(tmp_path / "missing.json")
    (tmp_path / "noq.jsonl").write_text(json.dumps({"answer": "A"}) + "\n")
    with pytest.raises(InputError, match="no question"):
        load_longreason(tmp_path / "noq.jsonl")


# ----------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"task": "nope"}, "--task must be one of"),
        ({"budgets": (0.0,)}, "fractions of the cache kept"),
        ({"task": "ifeval", "ifeval_data": "x", "budgets": (0.5,)}, "cache sizes in tokens"),
        ({"task": "ifeval"}, "needs --ifeval-data"),
        ({"fi_run": "x", "task": "qa"}, "use it with --task fidelity"),
    ],
)
def test_config_errors(kw, msg):
    with pytest.raises(InputError, match=msg):
        BenchConfig(**kw).validate()


def test_method_names():
    assert "fi_oracle" not in BenchConfig().method_names()
    with pytest.raises(InputError, match="valid: full"):
        BenchConfig(methods=("snap",)).method_names()
    with pytest.raises(InputError, match="needs --fi-run"):
        BenchConfig(methods=("fi_oracle",)).method_names()


def test_method_specs_set_hyperparameters_and_label_their_rows():
    """``NAME:KEY=VALUE`` builds the method with that hyperparameter (typed as its field's annotation),
    the canonical spec labelling its rows; a wrong key or value, or one setting named twice however
    spelled, is one InputError."""
    from forward_influence.bench.runner import _build
    from forward_influence.compress.specs import method_spec

    names = BenchConfig(methods=("SnapKV", "snapkv:window=8:kernel=3", "streaming-llm:n_sink=0")).method_names()
    assert names == ["snapkv", "snapkv:window=8:kernel=3", "streaming_llm:n_sink=0"]
    built = _build(names[1], 0.25, 0, None)
    assert (type(built).__name__, built.window, built.kernel, built.budget) == ("SnapKV", 8, 3, 0.25)
    assert _build(names[2], 0.5, 0, None).n_sink == 0
    assert _build("snapkv", 0.5, 0, None).window == get_compressor("snapkv").window != 8
    assert method_spec("infokv:rep=early_final")[1] == {"rep": "early_final"}
    assert method_spec("infokv:norm=none")[1] == {"norm": "none"}  # a str field keeps the string
    assert method_spec("distilled:window=none:head_mix=0")[1] == {"window": None, "head_mix": 0.0}
    for bad, msg in [
        ("snapkv:windw=8", "KEY one of kernel, n_sink, window"),
        ("snapkv:window", "KEY one of"),
        ("snapkv:window=eight", "window='eight', expected int"),
        ("distilled:window=0.5", "window='0.5', expected int"),
        ("snapkv:budget=0.5", "budget comes from the run's budgets"),
        ("snap:window=8", "unknown method 'snap:window=8'"),
        ("snapkv:n_sink=-1", "n_sink must be an int >= 0"),  # the built method's own check, before a model loads
        ("distilled:head_mix=2", "head_mix must be in"),
        ("fi_oracle:n_sink=-1", "n_sink must be an int >= 0"),
    ]:
        with pytest.raises(InputError, match=msg):
            BenchConfig(methods=(bad,), fi_run="x").method_names()
    for twice in [("snapkv", "snapkv"), ("SnapKV", "snapkv"), ("distilled:head_mix=0", "distilled:head_mix=0.0")]:
        with pytest.raises(InputError, match="twice"):
            BenchConfig(methods=twice).method_names()


def test_the_richest_prefill_serves_the_others_whatever_the_given_order(monkeypatch):
    """fi-bench prefills once per document when one method's recorded inputs cover the others': the
    method that records the most is prefilled first, not the one named first."""
    import torch

    from forward_influence.bench import runner

    prefilled = []

    class Cache:  # records which method's prefill was made; serves a method its needs cover
        def __init__(self, model, comp):
            self.recorded = comp.needs()
            prefilled.append(comp.name)

        def extend(self, ids):
            pass

        def can_fork(self, comp):
            return self.recorded.covers(comp.needs())

        def fork(self, comp):
            return self

        def cut(self, n):
            pass

    class Task:
        name = "t"

        def reference(self, cache, s, tok):
            return None

        def score(self, cache, s, ref, tok):
            return {"kl": 0.0}

    monkeypatch.setattr(runner, "CompressedCache", Cache)
    lm = type("LM", (), {"model": type("M", (), {"device": "cpu"})(), "tokenizer": None})()
    empty = torch.zeros(0, dtype=torch.long)
    sample = runner.Sample("d", torch.zeros(8, dtype=torch.long), empty, empty)
    rows = runner.run_prefill_sample(lm, Task(), sample, ["knorm", "snapkv:window=8", "snapkv"], (0.5,), 0, None)
    assert prefilled == ["snapkv"]  # window 64 covers window 8 and knorm's latest query
    assert sorted(r["method"] for r in rows) == ["knorm", "snapkv", "snapkv:window=8"]


def test_additivity_fit_on_constructed_rows():
    """The fit reads only cut rows with both quantities positive: a monotone
    relation gives Spearman 1 (reversed: -1) and the median ratio; fewer than
    3 rows give no fit."""
    from forward_influence.bench.report import additivity

    fi = [1.0, 2.0, 3.0, 4.0, 5.0]
    rows = pd.DataFrame(
        {
            "method": ["snapkv", "random", "snapkv", "fi_oracle", "random", "full", "snapkv", "random"],
            "fi_dropped": fi + [9.0, np.nan, 9.0],
            "kl_sum": [2 * f for f in fi] + [1.0, 1.0, 0.0],
        }
    )
    d, fit = additivity(rows)
    assert len(d) == fit["n"] == 5 and "full" not in set(d.method)
    assert fit["spearman"] == pytest.approx(1.0) and fit["pearson_log10"] == pytest.approx(1.0)
    assert fit["median_ratio"] == pytest.approx(2.0)
    reversed_ = rows.assign(kl_sum=[1 / f for f in fi] + [1.0, 1.0, 0.0])
    assert additivity(reversed_)[1]["spearman"] == pytest.approx(-1.0)
    assert additivity(rows.iloc[:2])[1] == {} and additivity(rows.drop(columns="fi_dropped"))[1] == {}


def test_punkt_tab_is_written_to_the_cache_dir(tmp_path, monkeypatch):
    """Issue 16, item 5: NLTK data goes under the project's cache directory,
    not into the Python installation."""
    nltk = pytest.importorskip("nltk")
    pytest.importorskip("punkt")
    from forward_influence.bench.ifeval import ensure_punkt_tab

    monkeypatch.setattr(nltk.data, "path", [])  # as if NLTK had none anywhere
    monkeypatch.setenv("FI_CACHE_DIR", str(tmp_path))
    d = ensure_punkt_tab()
    assert d == tmp_path / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    assert (d / "abbrev_types.txt").is_file()
    assert nltk.data.path == [str(tmp_path / "nltk_data")]
    assert Path(nltk.data.find("tokenizers/punkt_tab/english/")) == d


def test_the_distilled_method_needs_a_model_and_one_that_decodes_in_a_decoding_task(tmp_path):
    from forward_influence.bench.config import BenchConfig, shipped_model
    from forward_influence.errors import InputError
    from forward_influence.scoring import Scorer

    with pytest.raises(InputError, match="is not a file"):
        BenchConfig(distilled_model=str(tmp_path / "none.json")).validate()
    assert ("distilled" in BenchConfig().validate().method_names()) == shipped_model()

    def model(*names):
        feats = [{"name": n, "transform": "unit_rank"} for n in names]
        path = tmp_path / f"{'-'.join(names)}.json"
        Scorer(kind="linear", target="fi_far", features=feats, weights=np.ones(len(names))).save(path)
        return str(path)

    ifeval = dict(task="ifeval", ifeval_data="x.jsonl")
    every_query = model("attn_h2o", "entropy_in_topk")
    with pytest.raises(InputError, match="cannot cut a cache while decoding"):
        BenchConfig(**ifeval, methods=("distilled",), distilled_model=every_query).validate().method_names()
    assert "distilled" not in BenchConfig(**ifeval, distilled_model=every_query).validate().method_names()
    assert "distilled" in BenchConfig(**ifeval, distilled_model=model("attn_snapkv", "age")).validate().method_names()
    assert "distilled" in BenchConfig(task="fidelity", distilled_model=every_query).validate().method_names()


def test_decoding_runs_the_distilled_model_it_was_given(tmp_path):
    """ifeval's runner builds ``distilled`` with ``--distilled-model``, not the shipped model."""
    import torch

    from forward_influence.bench import runner
    from forward_influence.scoring import Scorer

    path = tmp_path / "m.json"
    feats = [{"name": "attn_snapkv", "transform": "unit_rank"}, {"name": "age", "transform": "unit_rank"}]
    Scorer(kind="linear", target="fi_far", features=feats, weights=np.array([1.0, -1.0])).save(path)
    used = []

    class Task:
        name = "ifeval"

        def reference(self, model, s, comp, tok):
            return {"tokens": []}

        def score(self, model, s, comp, budget, ref, tok):
            used.append(comp.model)
            return {"x": 1.0}

    lm = type("LM", (), {"model": None, "tokenizer": None})()
    empty = torch.zeros(0, dtype=torch.long)
    sample = runner.Sample("d", empty, empty, empty)
    runner.run_decoding_sample(lm, Task(), sample, ["distilled"], (16.0, 32.0), 0, model_file=str(path))
    assert used == [str(path), str(path)]
