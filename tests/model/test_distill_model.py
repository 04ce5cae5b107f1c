"""fi-distill end to end on a real (small) measurement of the embedded SmolLM2-135M: the CLI trains,
writes a model that loads under the same language model, and reports held-out figures by document;
bad runs give one line and exit 2, with no model written."""

from __future__ import annotations

import json

import pytest

from forward_influence.cli import distill as cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, smollm):
    from forward_influence import MeasureConfig
    from forward_influence.measurement.run import measure

    tmp = tmp_path_factory.mktemp("distill")
    text = (
        "The Rhine is a European river that begins in the Swiss canton of Graubünden in the southeastern Swiss Alps, "
        "then flows through the German Rhineland and the Netherlands and eventually empties into the North Sea. "
        "Its basin drains parts of nine countries, and its water feeds farms, towns and canals along the way. "
    )
    docs = tmp / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"id": f"r{i}", "text": text * (3 + i)}) for i in range(3)) + "\n")
    cfg = MeasureConfig(
        doc=str(docs),
        out=str(tmp / "run"),
        n_prefix=(80,),
        n_future=48,
        stride=4,
        window=8,
        near=8,
        far=16,
        progress=False,
    )
    measure(cfg, smollm)
    return tmp / "run"


def test_fi_distill_trains_writes_and_reports(run_dir, tmp_path, capsys):
    from forward_influence.scoring import load_scorer

    out = tmp_path / "model.json"
    assert (
        cli.main([str(run_dir), "--out", str(out), "--kinds", "linear,lgbm", "--folds", "3", "--inner-folds", "2"]) == 0
    )
    text = capsys.readouterr().out
    assert "held-out, mean over documents" in text and "oracle" in text
    model = json.loads(out.read_text())
    lm = model["provenance"]["language_model"]
    scorer = load_scorer(out, language_model=lm)
    assert scorer.target == "fi_far" and model["provenance"]["model_kind"] in ("linear", "hgb", "lgbm")
    assert "attn_snapkv" in scorer.feature_names and "age" in scorer.feature_names
    assert not any(f.startswith(("word", "is_content")) for f in scorer.feature_names)  # not causal: never a feature
    ev = {(r["method"], r["statistic"]): r for r in model["evaluation"]}
    # the oracle keeps at least what any causal ranking keeps of the target
    oracle = ev[("oracle", "kept_share_0.2")]["mean"]
    assert all(oracle >= r["mean"] - 1e-12 for (m, s), r in ev.items() if s == "kept_share_0.2")
    assert ev[("distilled", "kept_share_0.2")]["n_docs"] == 3
    held = (out.parent / "model.heldout.csv").read_text()
    assert held.count("\n") == 1 + 3 * len({m for m, _ in ev})


def test_fi_distill_bad_input_exits_2_without_a_model(run_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    with pytest.raises(SystemExit) as e:
        cli.entry([str(tmp_path / "nowhere"), "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fi-distill: error:")
    with pytest.raises(SystemExit) as e:
        cli.entry([str(run_dir), "--out", str(out), "--kinds", "ridge"])
    assert e.value.code == 2 and "--kinds" in capsys.readouterr().err
    assert not out.exists()


#: In-cache features vs the measured tables: the same code over an 80-token prompt vs the whole
#: 128-token document (causal: equal up to float32 summation order).
FEATURE_RTOL, FEATURE_ATOL = 1e-4, 1e-6


@pytest.mark.parametrize("exclude", [(), ("attn_h2o",)], ids=["every-signal", "no-h2o"])
def test_distilled_computes_the_measured_features_and_keeps_what_the_offline_scorer_ranks_first(
    run_dir, tmp_path, smollm, exclude
):
    import numpy as np
    import torch

    from forward_influence.compress import compress_prompt, get_compressor, n_kept
    from forward_influence.distill import models
    from forward_influence.distill.data import run_units
    from forward_influence.measurement.signal_registry import with_inputs
    from forward_influence.scoring import AGE
    from forward_influence.store.results import MeasureResult

    units = run_units(run_dir).without(exclude)
    scorer = models.fit("linear", units, "fi_far")
    scorer.signal_config = units.runs[0]["signal_config"]
    path = scorer.save(tmp_path / "linear.json")
    res = MeasureResult.load(run_dir)
    doc = res.tokens["doc_id"].iloc[0]
    tok = res.tokens[res.tokens["doc_id"] == doc].sort_values("pos")
    src = res.source_signals[res.source_signals["doc_id"] == doc].sort_values("pos")
    n = int(src["split_pos"].iloc[0])
    ids = torch.tensor(tok["token_id"].to_numpy()[:n])
    comp = get_compressor("distilled", model=str(path), budget=0.5, head_mix=0.0)  # one score per token
    cache, _ = compress_prompt(smollm.model, ids, comp)
    # 0. the prefill computed what the scorer reads (and what that derives from), nothing else
    assert list(cache.signals) == with_inputs(tuple(f for f in scorer.feature_names if f != AGE))
    assert ("attn_h2o" in cache.signals) == (not exclude)
    # 1. every feature the scorer reads, computed inside the cache, equals the measured table's
    for name in scorer.feature_names:
        if name == AGE:
            continue
        got = np.asarray(cache.signals[name], float)
        got = got[0] if got.ndim == 2 else got
        table = src if name in src.columns else tok
        want = table[name].to_numpy(float)[:n]
        np.testing.assert_allclose(got[:n], want, rtol=FEATURE_RTOL, atol=FEATURE_ATOL, err_msg=name)
    # 2. the kept positions: sinks, the window, and the candidates the offline scorer ranks first
    pos = np.arange(n)
    cand = (pos >= comp.n_sink) & (pos < n - comp.window)
    cols = {AGE: (n - pos[cand]).astype(float)}
    for name in scorer.feature_names:
        if name != AGE:
            cols[name] = (src if name in src.columns else tok)[name].to_numpy(float)[:n][cand]
    offline = scorer.score(cols)
    k = n_kept(0.5 * n, n) - int((~cand).sum())
    want = set(pos[~cand]) | set(pos[cand][np.argsort(-offline, kind="stable")[:k]])
    for layer_pos in cache.positions:
        for head in layer_pos:
            assert set(head.tolist()) == want
