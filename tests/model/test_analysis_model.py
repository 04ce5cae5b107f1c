"""Analyzers: planted effects are recovered, selection rules on hand-made tables,: the tests on the embedded
SmolLM2-135M; the fast ones and the topic's notes are in tests/unit/test_analysis.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pandas as pd
import pytest

from forward_influence.analysis.analyze import (
    INCONCLUSIVE,
    AnalyzeConfig,
)


# ------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def analyzed(tmp_path_factory, smollm):
    """A real (small) measurement of 3 documents on the embedded model, analysed."""
    from forward_influence import MeasureConfig
    from forward_influence.analysis.report import analyze_run
    from forward_influence.measurement.run import measure

    tmp = tmp_path_factory.mktemp("analysis")
    text = (
        "The Rhine is a European river that begins in the Swiss canton of Graubünden in the southeastern Swiss Alps, "
        "forms part of the Swiss-Austrian, Swiss-Liechtenstein border, Swiss-German and then the Franco-German border, "
        "then flows through the German Rhineland and the Netherlands and eventually empties into the North Sea. "
    )
    docs = tmp / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"id": f"r{i}", "text": text * (3 + i)}) for i in range(3)) + "\n")
    cfg = MeasureConfig(
        doc=str(docs),
        out=str(tmp / "run"),
        n_prefix=(96,),
        n_future=32,
        stride=3,
        window=8,
        near=8,
        far=16,
        progress=False,
    )
    res = measure(cfg, smollm)
    a, path = analyze_run(tmp / "run", AnalyzeConfig(n_boot=100), result=res)
    return a, path


def test_analyze_real_run_and_report(analyzed, tmp_path):
    a, path = analyzed
    assert path.name == "analysis" and (path.parent / "run.json").is_file()
    fam = a.claims[a.claims.role == "claim"]
    assert list(fam.claim) == ["1a", "1b", "2", "3"]  # F = 32 > far = 16: claim 1 tested in split mode
    assert (fam.verdict == INCONCLUSIVE).all() and (fam.n_docs == 3).all()  # 3 documents: estimates only
    assert (a.claims.ci_low == -float("inf")).all() and (
        a.claims.ci_high == float("inf")
    ).all()  # no rejection possible: —
    assert {"word mean", "all tokens", "entropy_out_topk", "surprisal"} <= set(
        a.claims.reading
    )  # claim 2's other readings
    assert (a.claim_documents.groupby(["claim", "reading"]).doc_id.nunique() == 3).all()
    for name in ("fi_vs_distance", "entropy_vs_influence_far", "word_class_entropy", "selection_word_mix"):
        assert (path / "figures" / f"{name}.png").stat().st_size > 5000
        assert (path / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    for name in ("claims", "correlations", "selection", "selection_summary", "distance_curves", "word_tests"):
        assert len(pd.read_parquet(path / f"{name}.parquet")) > 0
    # the oracle keeps the most FI; kept shares are shares
    ss = a.selection_summary[
        (a.selection_summary.quantity == "kept_share_total") & (a.selection_summary.subset == "all")
    ]
    best = ss.loc[ss.groupby("budget").estimate.idxmax()]
    assert (best.rule == "fi_oracle").all() and ss.estimate.between(0, 1).all()
    html = (path / "report.html").read_text()
    assert html.index("The study's claims") < html.index("<h2>Figures")
    assert "https://" not in html and "http://" not in html.replace("http://www.w3.org", "")  # self-contained
    assert html.count("data:image/png;base64,") >= 4
    meta = json.loads((path / "analysis.json").read_text())
    assert meta["run"]["model"]["revision"].startswith("sha256:") and meta["analyze_config"]["n_boot"] == 100


def test_fi_analyze_cli_bad_input_and_rerun(analyzed, tmp_path, capsys):
    from forward_influence.cli.analyze import entry

    a, path = analyzed
    for argv, needle in (
        ([str(tmp_path / "nope")], "is not a directory"),
        ([str(path.parent), "--budgets", "0,0.5"], "--budgets"),
    ):
        with pytest.raises(SystemExit) as e:
            entry(argv)
        assert e.value.code == 2 and needle in capsys.readouterr().err
    out = tmp_path / "again"
    with pytest.raises(SystemExit) as e:
        entry([str(path.parent), "--out", str(out), "--n-boot", "50", "--budgets", "0.3"])
    assert e.value.code == 0 and "claim 1a" in capsys.readouterr().out
    assert sorted(pd.read_parquet(out / "selection_summary.parquet").budget.unique()) == [0.3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".again-")]  # no temp dir left


def test_report_renders_in_headless_chromium(analyzed):
    """`make test` installs Debian's chromium where it can (.ci/ensure-chromium); a skip here means it could not."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip(
            "no headless browser on PATH (chromium, chromium-browser, google-chrome): `make test` installs "
            "Debian's chromium when run as root with apt-get; elsewhere install it to check that report.html renders"
        )
    a, path = analyzed
    dom = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (path / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    marks = dict(re.findall(r'data-(images-total|images-loaded|claims-rows)="(\d+)"', dom))
    assert len(marks) == 3, "the page's load handler did not run"
    assert int(marks["images-total"]) >= 4 and marks["images-loaded"] == marks["images-total"], marks
    assert int(marks["claims-rows"]) == (a.claims.role == "claim").sum() == 4, marks  # the family: 1a, 1b, 2, 3
    table = re.search(r'<table id="claims">.*?</table>', dom, re.S)
    assert table and all(f">{c}<" in table.group() for c in ("1a", "1b", "2", "3"))


def test_analysis_dir_follows_the_umask(analyzed, tmp_path):
    import os
    import stat

    from forward_influence.analysis.report import write_analysis
    from forward_influence.store.results import MeasureResult

    a, path = analyzed
    old = os.umask(0o022)
    try:
        out = write_analysis(a, MeasureResult.load(path.parent), tmp_path / "run" / "analysis")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755 and stat.S_IMODE((out / "figures").stat().st_mode) == 0o755
