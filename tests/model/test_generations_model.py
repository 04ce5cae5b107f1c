"""fi-measure --generate. Tier 1: a tiny random Llama with a byte-level tokenizer built in code —: the tests on the
embedded SmolLM2-135M; the fast ones and the topic's notes are in tests/unit/test_generations.py."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import DATA

from forward_influence.measurement import generations as G
from forward_influence.store.results import MeasureResult

# ------------------------------------------------------------------ tier 2: the embedded model
IFEVAL = str(DATA / "ifeval" / "input_data.jsonl")
IFEVAL_LINES = (DATA / "ifeval" / "input_data.jsonl").read_text().splitlines()
from helpers.generations import gen_settings  # noqa: E402, F401, F811


def test_smollm_sampled_generation_reproducible(smollm):
    ids = G.chat_prompt_ids(smollm.tokenizer, "Name three rivers.")
    gen = gen_settings(temperature=0.9, top_p=0.95, max_new_tokens=8, min_new_tokens=8)
    a = G.generate_ids(smollm.model, smollm.tokenizer, ids, gen, seed=11)
    assert a == G.generate_ids(smollm.model, smollm.tokenizer, ids, gen, seed=11) and len(a) == 8


def test_cli_generate_ifeval_sliding_then_analyze_generated(smollm, tmp_path, capsys):
    from forward_influence.cli.analyze import entry as analyze_entry
    from forward_influence.cli.measure import entry

    out = tmp_path / "gen"
    argv = [
        "--generate",
        IFEVAL,
        "--max-docs",
        "2",
        "--mode",
        "sliding",
        "--delay",
        "4",
        "--horizon",
        "8",
        "--window",
        "4",
        "--stride",
        "6",
        "--max-new-tokens",
        "20",
        "--min-new-tokens",
        "20",
        "--no-report",
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit) as e:
        entry(argv)
    std = capsys.readouterr()
    assert e.value.code == 0, std.err
    assert "2 generations (0 skipped)" in std.out
    res = MeasureResult.load(out)
    rows = [json.loads(x) for x in IFEVAL_LINES[:2]]
    lines = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [str(r["key"]) for r in rows]
    for line, row in zip(lines, rows):
        want = G.chat_prompt_ids(smollm.tokenizer, row["prompt"]).tolist()
        tok = res.tokens[res.tokens.doc_id == line["id"]].sort_values("pos")
        assert line["prompt_ids"] == want and tok.token_id.tolist() == want + line["generated_ids"]
        assert (tok.segment == "prompt").sum() == len(want) and (tok.segment.iloc[len(want) :] == "generated").all()
        gen = tok.iloc[len(want) :]
        assert gen.word_class.isin(["content", "function"]).any()  # spaCy tags align through the decoded offsets
        assert (res.summary[res.summary.doc_id == line["id"]].source_pos >= len(want)).all()
    assert res.meta["generation"]["settings"]["max_new_tokens"] == 20 and res.meta["config"]["generate"] == IFEVAL
    with pytest.raises(SystemExit) as e:
        analyze_entry([str(out), "--segment", "generated", "--n-boot", "20", "--n-random", "2", "--budgets", "0.5"])
    std = capsys.readouterr()
    assert e.value.code == 0, std.err
    assert "generated tokens" in std.out
    meta = json.loads((out / "analysis" / "analysis.json").read_text())
    assert meta["segment"] == "generated" and meta["analyze_config"]["segment"] == "generated"
    claims = pd.read_parquet(out / "analysis" / "claims.parquet")
    assert (claims.segment == "generated").all() and "2" in set(claims.claim)


def test_cli_no_usable_generation_exit_2_no_output(smollm, tmp_path, capsys):
    from forward_influence.cli.measure import entry

    out = tmp_path / "none"
    with pytest.raises(SystemExit) as e:
        entry(
            [
                "--generate",
                IFEVAL,
                "--max-docs",
                "1",
                "--mode",
                "sliding",
                "--delay",
                "4",
                "--horizon",
                "8",
                "--max-new-tokens",
                "6",
                "--no-words",
                "--out",
                str(out),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        e.value.code == 2
        and len(err) == 1
        and err[0].startswith("fi-measure: error:")
        and "raise --min-new-tokens to 12" in err[0]
    )
    assert not out.exists()
