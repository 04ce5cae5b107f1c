"""fi-measure --generate. Tier 1: a tiny random Llama with a byte-level tokenizer built in code —
generations reproducible from their seed, the measured document is prompt + generated ids exactly,
segments align, too-short generations are skipped, none usable fails cleanly, resume reuses the
stored generations, fi-analyze --segment restricts the analysis. Tier 2 (marked ``model``): the CLI
end to end on IFEval prompts with the embedded model and its chat template."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_chat_model

from forward_influence.analysis.analyze import AnalyzeConfig, analyze
from forward_influence.config import MeasureConfig
from forward_influence.errors import InputError
from forward_influence.execution import pool as E  # noqa: E402  (the model source loads through it)
from forward_influence.measurement import generations as G
from forward_influence.measurement import units as U  # noqa: E402
from forward_influence.measurement.run import measure

PROMPTS = ["Say something long about the sea.", "Héllo — count to ten, please."]
#: sliding mode, tiny: D = 2, H = 4, so a generation needs 6 new tokens
SLIDING = dict(mode="sliding", delay=2, horizon=4, window=2, stride=3, words=False, progress=False, report=False)


@pytest.fixture(scope="module")
def lm():
    return tiny_chat_model()


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"key": 10 + i, "prompt": t}) + "\n" for i, t in enumerate(PROMPTS)))
    return p


from helpers.generations import gen_settings  # noqa: E402, F401, F811


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_generation_reproducible_from_its_seed(lm, temperature):
    ids = G.chat_prompt_ids(lm.tokenizer, PROMPTS[0])
    gen = gen_settings(temperature=temperature)
    a = G.generate_ids(lm.model, lm.tokenizer, ids, gen, seed=5)
    torch.manual_seed(123)  # the global state does not matter
    b = G.generate_ids(lm.model, lm.tokenizer, ids, gen, seed=5)
    c = G.generate_ids(lm.model, lm.tokenizer, ids, gen, seed=6)
    assert a == b and len(a) == 12
    assert (a == c) == (temperature == 0.0)  # greedy ignores the seed; sampling follows it


def test_global_rng_state_unchanged(lm):
    ids = G.chat_prompt_ids(lm.tokenizer, PROMPTS[0])
    before = torch.get_rng_state()
    G.generate_ids(lm.model, lm.tokenizer, ids, gen_settings(temperature=0.8, top_p=0.9), seed=1)
    assert torch.equal(before, torch.get_rng_state())


def test_min_new_tokens_holds_off_end_of_sequence(lm):
    ids = G.chat_prompt_ids(lm.tokenizer, PROMPTS[0])
    first = G.generate_ids(lm.model, lm.tokenizer, ids, gen_settings(), seed=0)[0]
    eos = lm.model.generation_config.eos_token_id
    lm.model.generation_config.eos_token_id = first  # the greedy first token now ends the sequence
    try:
        early = G.generate_ids(lm.model, lm.tokenizer, ids, gen_settings(min_new_tokens=0), seed=0)
        held = G.generate_ids(lm.model, lm.tokenizer, ids, gen_settings(min_new_tokens=7), seed=0)
    finally:
        lm.model.generation_config.eos_token_id = eos
    assert early == [first]
    assert len(held) >= 7 and first not in held[:7]


def test_offsets_partition_the_decoded_text(lm):
    tok = lm.tokenizer
    ids = G.chat_prompt_ids(tok, "Héllo wörld — ok").tolist() + [200, 130, 5, 150]  # ends inside a character
    text, off = G.decode_offsets(tok, ids)
    assert text == tok.decode(ids)
    special = np.isin(ids, sorted(G.special_ids(tok)))
    assert special.sum() == 3  # <|im_start|> user ... <|im_end|> <|im_start|> assistant

    assert (off[special] == 0).all()
    pieces = "".join(text[a:b] for (a, b), s in zip(off, special) if not s)
    assert pieces == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert (np.diff(off[~special, 0]) >= 0).all()


def test_measured_document_is_prompt_plus_generated_ids(lm, prompts, tmp_path):
    out = tmp_path / "run"
    cfg = MeasureConfig(generate=str(prompts), out=str(out), max_new_tokens=14, min_new_tokens=14, **SLIDING)
    res = measure(cfg, lm)
    lines = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["10", "11"]
    for line, text in zip(lines, PROMPTS):
        tok = res.tokens[res.tokens.doc_id == line["id"]].sort_values("pos")
        assert line["prompt_ids"] == G.chat_prompt_ids(lm.tokenizer, text).tolist()
        assert tok.token_id.tolist() == line["prompt_ids"] + line["generated_ids"]
        assert len(line["generated_ids"]) == 14 and line["settings"] == G.settings(cfg)
        p = len(line["prompt_ids"])
        assert tok.segment.tolist() == ["prompt"] * p + ["generated"] * 14
        src = res.summary[res.summary.doc_id == line["id"]].source_pos
        assert src.min() == p and (src - p).tolist() == list(range(0, 14 - 6 + 1, 3))  # generated tokens only
        assert line["model"]["name"] == "tiny-llama" and line["prompt_seed"] == G.prompt_seed(0, line["id"])
    meta = json.loads((out / "run.json").read_text())
    assert meta["generation"]["settings"] == G.settings(cfg) and meta["generation"]["generated"] == 2
    assert meta["config"]["generate"] == str(prompts) and meta["skipped"] == []
    assert [d["n_prompt"] for d in meta["documents"]] == [len(x["prompt_ids"]) for x in lines]


def test_too_short_generation_skipped_with_a_reason(lm, tmp_path, caplog):
    p = tmp_path / "p.json"
    p.write_text(json.dumps([{"id": "short", "text": "Hi"}, {"id": "long", "text": "x" * 40}]))
    n_long = len(G.chat_prompt_ids(lm.tokenizer, "x" * 40))
    # split mode needs N + F tokens in all: the long prompt + 6 new tokens has them, the short one not
    cfg = MeasureConfig(
        generate=str(p),
        mode="split",
        n_prefix=(n_long,),
        n_future=4,
        stride=4,
        window=2,
        max_new_tokens=6,
        min_new_tokens=6,
        words=False,
        progress=False,
        report=False,
    )
    with caplog.at_level("WARNING", logger="forward_influence.measurement.run"):
        res = measure(cfg, lm)
    assert res.summary.doc_id.unique().tolist() == ["long"]
    (skip,) = res.meta["skipped"]
    assert skip["doc_id"] == "short" and "raise --min-new-tokens" in skip["reason"] and "\n" not in skip["reason"]
    (record,) = [r for r in caplog.records if r.name.startswith("forward_influence")]
    assert "short" in record.getMessage() and not [r for r in caplog.records if r.name.startswith("transformers")]


def test_none_usable_raises_and_leaves_no_output(lm, prompts, tmp_path):
    out = tmp_path / "none"
    cfg = MeasureConfig(generate=str(prompts), out=str(out), max_new_tokens=5, min_new_tokens=5, **SLIDING)
    with pytest.raises(InputError, match="raise --min-new-tokens to 6") as e:
        measure(cfg, lm)
    assert "\n" not in str(e.value) and not out.exists()


def test_doc_and_generate_together_refused():
    with pytest.raises(InputError, match="not both"):
        MeasureConfig(doc="a.json", generate="p.jsonl").validate()


def test_resume_reuses_generations_and_equals_uninterrupted(lm, prompts, tmp_path, monkeypatch):
    kw = dict(generate=str(prompts), max_new_tokens=14, min_new_tokens=14, **SLIDING)
    full = measure(MeasureConfig(out=str(tmp_path / "full"), **kw), lm)
    killed = tmp_path / "killed"
    real = U.measure_unit
    calls = []

    def crash_after_first(*a, **k):
        if calls:
            raise KeyboardInterrupt  # stands in for kill -9 after the first document's checkpoint (one unit each)
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(U, "measure_unit", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        measure(MeasureConfig(out=str(killed), **kw), lm)
    monkeypatch.setattr(U, "measure_unit", real)
    monkeypatch.setattr(G, "generate_ids", lambda *a, **k: pytest.fail("a stored generation was regenerated"))
    again = measure(MeasureConfig(out=str(killed), **kw), lm)
    assert again.meta["generation"]["reused"] == 2 and any(d.get("resumed") for d in again.meta["per_document"])
    for name in ("tokens", "influence", "summary", "source_signals"):
        pd.testing.assert_frame_equal(getattr(full, name), getattr(again, name))


def test_interrupted_generation_keeps_finished_prompts(lm, prompts, tmp_path, monkeypatch):
    kw = dict(generate=str(prompts), out=str(tmp_path / "g"), max_new_tokens=14, min_new_tokens=14, **SLIDING)
    real = G.generate_ids
    calls = []

    def crash_on_second(*a, **k):
        if calls:
            raise KeyboardInterrupt  # killed while generating the second prompt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(G, "generate_ids", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        measure(MeasureConfig(**kw), lm)
    assert (
        len((tmp_path / "g" / "generations.jsonl").read_text().splitlines()) == 1
        and not (tmp_path / "g" / "run.json").exists()
    )
    monkeypatch.setattr(G, "generate_ids", real)
    res = measure(MeasureConfig(**kw), lm)
    assert (res.meta["generation"]["reused"], res.meta["generation"]["generated"]) == (1, 1)
    assert res.summary.doc_id.nunique() == 2


def test_generations_file_remeasured_without_generating(lm, prompts, tmp_path, monkeypatch):
    kw = dict(max_new_tokens=14, min_new_tokens=14, **SLIDING)
    first = measure(MeasureConfig(generate=str(prompts), out=str(tmp_path / "a"), **kw), lm)
    monkeypatch.setattr(G, "generate_ids", lambda *a, **k: pytest.fail("regenerated"))
    split = measure(
        MeasureConfig(
            generate=str(tmp_path / "a" / "generations.jsonl"),
            **{**kw, "mode": "split", "n_prefix": (30,), "n_future": 8},
        ),
        lm,
    )
    assert split.meta["generation"]["from_file"] == 2
    for d in ("10", "11"):
        a = first.tokens[first.tokens.doc_id == d].token_id.tolist()
        assert split.tokens[split.tokens.doc_id == d].token_id.tolist() == a[:38]


def test_segment_restricts_the_analysis(lm, prompts, tmp_path):
    # split inside the generations, with >= 4 generated candidates (below N - window) per prompt
    n = max(len(G.chat_prompt_ids(lm.tokenizer, t)) for t in PROMPTS) + 12
    cfg = MeasureConfig(
        generate=str(prompts),
        mode="split",
        n_prefix=(n,),
        n_future=6,
        window=2,
        stride=2,
        max_new_tokens=24,
        min_new_tokens=24,
        words=False,
        progress=False,
        report=False,
    )
    res = measure(cfg, lm)
    n_prompt = {d["doc_id"]: d["n_prompt"] for d in res.meta["documents"]}
    assert sorted(n_prompt) == ["10", "11"]  # neither generation skipped as too short
    acfg = dict(n_boot=20, n_random=2, budgets=(0.4,))
    for seg in ("generated", "prompt"):
        a = analyze(res, AnalyzeConfig(segment=seg, **acfg))
        generated = a.sources.pos >= a.sources.doc_id.map(n_prompt)
        assert (generated if seg == "generated" else ~generated).all() and len(a.sources)
        assert (a.tokens.segment == seg).all() and (a.claims.segment == seg).all()
        assert a.meta["segment"] == seg and len(a.segment_claims) == 0
    both = analyze(res, AnalyzeConfig(**acfg))
    assert set(both.segment_claims.segment) == {"prompt", "generated"} and len(both.sources) > len(a.sources)


def test_segment_needs_a_generate_run(lm, tmp_path):
    d = tmp_path / "d.json"
    d.write_text(json.dumps({"id": "d", "text": "The sea is wide and deep. " * 4}))
    res = measure(
        MeasureConfig(
            doc=str(d),
            mode="split",
            n_prefix=(30,),
            n_future=8,
            window=2,
            stride=2,
            words=False,
            progress=False,
            report=False,
        ),
        lm,
    )
    assert "segment" not in res.tokens
    with pytest.raises(InputError, match="--segment generated needs a run of fi-measure --generate"):
        analyze(res, AnalyzeConfig(segment="generated", n_boot=20))
    with pytest.raises(InputError, match="--segment must be one of all, generated, prompt"):
        AnalyzeConfig(segment="answer").validate()


def test_synthetic_prompts_from_the_run_seed(lm):
    cfg = MeasureConfig(generate="synthetic:variable_tracking", synthetic_examples=3, synthetic_length=800, seed=4)
    a, b = G.load_prompts(cfg, lm.tokenizer), G.load_prompts(cfg, lm.tokenizer)
    assert [p.doc_id for p in a] == ["vartrack-0", "vartrack-1", "vartrack-2"] and a == b
    assert [p.meta["depth"] for p in a] == [0.1667, 0.5, 0.8333]
    assert all(p.text.rstrip().endswith(G.REASON) and "What is the value of VAR" in p.text for p in a)
    assert a[0].meta["answer"] in a[0].text
    other = G.load_prompts(MeasureConfig(**{**cfg.to_dict(), "seed": 5}), lm.tokenizer)
    assert other[0].text != a[0].text
    with pytest.raises(InputError, match="unknown kind; use one of passkey, multikey, vartrack"):
        G.load_prompts(MeasureConfig(generate="synthetic:sudoku"), lm.tokenizer)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--doc", "d.json", "--generate", "p.jsonl"],
            "give --doc (documents) or --generate (prompts to continue), not both",
        ),
        (["--generate", "missing.jsonl"], "file not found"),
        (["--generate", "p.jsonl", "--top-p", "0.9"], "--top-p samples; give --temperature > 0"),
    ],
    ids=["doc-and-generate", "missing-prompts", "top-p-without-temperature"],
)
def test_cli_bad_generate_flags_one_line_no_output(argv, message, tmp_path, capsys, monkeypatch):
    from forward_influence.cli.measure import entry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(E, "load_model", lambda *a, **k: tiny_chat_model())
    with pytest.raises(SystemExit) as e:
        entry([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("fi-measure: error:") and message in err[0]
    assert not (tmp_path / "out").exists()
