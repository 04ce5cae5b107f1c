"""Every input path is hardened (tier 1): documents, prompts and run directories
that are mis-encoded, hold control characters, are too large, vanish part-way,
are corrupted or come from another schema version give one error line, exit
status 2 and no output directory, through fi-measure, fi-bench and fi-analyze."""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from forward_influence.bench.ifeval import load_ifeval
from forward_influence.config import MeasureConfig
from forward_influence.errors import InputError
from forward_influence.measurement import textfiles
from forward_influence.measurement.documents import load_documents
from forward_influence.store.results import SCHEMA_VERSION, MeasureResult, PartStore, fresh_dir

TEXT = "The quick brown fox jumps over the naïve dog."
GOOD_LINE = json.dumps({"id": "a", "text": TEXT}, ensure_ascii=False) + "\n"  # 'ï' is two bytes in UTF-8
IFEVAL_LINE = json.dumps({"key": 1, "prompt": "Say hi.", "instruction_id_list": [], "kwargs": []}) + "\n"
SMALL_JSON_LIMIT = 1024  # stands in for the 256 MiB limit (a test cannot write that much)


def squad(context: str) -> dict:
    qa = {"id": "q1", "question": "Who?", "answers": [{"text": "fox", "answer_start": 16}]}
    return {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [qa]}]}]}


def latin1(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("latin-1")


# --------------------------------------------------------------- files, one per case
#: name -> (file name, bytes, substrings of the one error line)
BAD_FILES = {
    "latin1-txt": ("doc.txt", b"Caf\xe9 au lait", ["not UTF-8 at byte 3 (0xe9", "iconv"]),
    "latin1-json": (
        "doc.json",
        latin1({"id": "a", "text": "Café"}),
        [f"not UTF-8 at byte {latin1({'id': 'a', 'text': 'Café'}).index(0xE9)}", "re-save it as UTF-8"],
    ),
    "latin1-jsonl-line2": (
        "doc.jsonl",
        GOOD_LINE.encode() + latin1({"id": "b", "text": "é"}),
        [f"not UTF-8 at byte {len(GOOD_LINE.encode()) + 21}"],
    ),
    "latin1-squad": ("squad.json", latin1(squad("The quick brown fox, café.")), ["not UTF-8 at byte", "iconv"]),
    "bom-then-latin1": ("doc.txt", textfiles.BOM + b"ab\xff", ["not UTF-8 at byte 5 (0xff"]),
    "utf16": ("doc.txt", TEXT.encode("utf-16"), ["not UTF-8 at byte 0 (0xff", "iconv -f utf-16"]),
    "nul-txt": ("doc.txt", b"abc\x00def", ["NUL character at byte 3", "UTF-8 text without NULs"]),
    "escape-jsonl": (
        "doc.jsonl",
        GOOD_LINE.encode() + b'{"id": "b", "text": "esc\x1b[0m"}\n',
        [f"U+001B at byte {len(GOOD_LINE.encode()) + 24}", "remove it"],
    ),
    "escaped-nul-json": (
        "doc.json",
        json.dumps([{"id": "z", "text": "a\u0000b"}]).encode(),
        ["document 'z': NUL character at character 1"],
    ),
    "too-large-json": (
        "big.json",
        json.dumps([{"id": f"d{i}", "text": TEXT} for i in range(40)]).encode(),
        ["above the 1 KiB limit for .json", "convert it to JSONL"],
    ),
}


def write_bad(tmp_path: Path, case: str, monkeypatch) -> tuple[Path, list[str]]:
    name, raw, needles = BAD_FILES[case]
    p = tmp_path / name
    p.write_bytes(raw)
    monkeypatch.setattr(textfiles, "MAX_JSON_BYTES", SMALL_JSON_LIMIT)
    return p, [str(p)] + needles


class FailingFile(io.BytesIO):
    """A file whose first line reads, then fails as a vanished network file would."""

    def __next__(self) -> bytes:
        if self.tell() > 0:
            raise OSError(errno.EIO, "Input/output error")
        return super().__next__()

    def read(self, *a) -> bytes:  # noqa: ANN002
        raise OSError(errno.EIO, "Input/output error")


def failing_midway(monkeypatch) -> None:
    monkeypatch.setattr(textfiles, "_open", lambda path: FailingFile(path.read_bytes()))


def vanishing(monkeypatch) -> None:
    real = textfiles._open

    def vanish(path: Path):
        path.unlink()  # gone between the caller's checks and the open
        return real(path)

    monkeypatch.setattr(textfiles, "_open", vanish)


# --------------------------------------------------------------- the readers
@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_one_line(case, tmp_path, monkeypatch):
    p, needles = write_bad(tmp_path, case, monkeypatch)
    with pytest.raises(InputError) as e:
        load_documents(p)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


@pytest.mark.parametrize(
    "name, body",
    [("d.txt", TEXT), ("d.json", json.dumps([{"id": "a", "text": TEXT}])), ("d.jsonl", GOOD_LINE)],
    ids=["txt", "json", "jsonl"],
)
def test_bom_accepted(tmp_path, name, body):
    p = tmp_path / name
    p.write_bytes(textfiles.BOM + body.encode())
    (doc,) = load_documents(p)
    assert doc.text == TEXT


def test_read_failure_midway_and_vanished_file(tmp_path, monkeypatch):
    p = tmp_path / "d.jsonl"
    p.write_text(GOOD_LINE * 3)
    with monkeypatch.context() as m:
        failing_midway(m)
        with pytest.raises(
            InputError, match=rf"d.jsonl: read failed at byte {len(GOOD_LINE.encode())} \(Input/output error\); check"
        ):
            load_documents(p)
        (tmp_path / "x.json").write_text("[]")
        with pytest.raises(InputError, match=r"x.json: read failed \(Input/output error\)"):
            load_documents(tmp_path / "x.json")
    vanishing(monkeypatch)
    with pytest.raises(InputError, match="d.jsonl not found"):
        load_documents(p)


def test_jsonl_is_read_lazily(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes((GOOD_LINE + GOOD_LINE.replace('"a"', '"b"')).encode() + b"\xff broken tail\n")
    assert [d.doc_id for d in load_documents(p, max_docs=2)] == ["a", "b"]  # the bad line is never read
    assert [d.doc_id for d in load_documents(p, doc_ids=["a"])] == ["a"]
    with pytest.raises(InputError, match="line 3|not UTF-8"):
        load_documents(p)
    q = tmp_path / "ifeval.jsonl"
    q.write_bytes(IFEVAL_LINE.encode() + b"\x00\n")
    assert len(load_ifeval(q, n_samples=1)) == 1
    with pytest.raises(InputError, match="NUL character"):
        load_ifeval(q)


def test_json_size_limit_is_named(tmp_path, monkeypatch):
    assert textfiles.MAX_JSON_BYTES == 256 * 2**20
    p = tmp_path / "big.json"
    p.write_text(json.dumps([{"id": f"d{i}", "text": TEXT} for i in range(40)]))
    monkeypatch.setattr(textfiles, "MAX_JSON_BYTES", SMALL_JSON_LIMIT)
    with pytest.raises(
        InputError, match=rf"big.json is {textfiles.human_bytes(p.stat().st_size)}, above the 1 KiB limit for .json"
    ):
        load_documents(p)


# --------------------------------------------------------------- run directories
def tiny_run(out: Path) -> Path:
    """A complete fi-measure run directory of two sources on a four-token document."""
    from forward_influence.store.tables import summarize_influence

    tokens = pd.DataFrame(
        {
            "doc_id": ["d0"] * 4,
            "pos": range(4),
            "token_id": [5, 6, 7, 8],
            "token": list("abcd"),
            "char_start": range(4),
            "char_end": range(1, 5),
        }
    )
    influence = pd.DataFrame(
        {
            "doc_id": "d0",
            "mode": "split",
            "split_pos": 2,
            "source_pos": [0, 0, 1, 1],
            "layer": pd.NA,
            "kv_head": pd.NA,
            "target_pos": [2, 3, 2, 3],
            "distance": [2, 3, 1, 2],
            "distance_tau": [0, 1, 0, 1],
            "kl": [0.1, 0.2, 0.3, 0.4],
        }
    )
    influence[["split_pos", "layer", "kv_head"]] = influence[["split_pos", "layer", "kv_head"]].astype("Int64")
    source = pd.DataFrame(
        {
            "doc_id": "d0",
            "split_pos": pd.array([2, 2], dtype="Int64"),
            "pos": [0, 1],
            "tau": [2, 2],
            "attn_snapkv": [0.6, 0.4],
            "attn_h2o": [0.7, 0.3],
        }
    )
    meta = {
        "run_id": "tiny",
        "status": "complete",
        "config": MeasureConfig(n_prefix=(2,), n_future=2, out=str(out)).to_dict(),
    }
    return MeasureResult(
        tokens=tokens, influence=influence, summary=summarize_influence(influence), source_signals=source, meta=meta
    ).save(out)


def edit_run_json(out: Path, **changes) -> None:
    meta = json.loads((out / "run.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    (out / "run.json").write_text(json.dumps(meta))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


#: name -> (damage done to a tiny run directory, substrings of the one error line)
BAD_RUNS = {
    "truncated-tokens": (
        lambda r: truncate(r / "tokens.parquet"),
        ["tokens.parquet is not a readable Parquet table", "re-run fi-measure"],
    ),
    "garbage-summary": (
        lambda r: (r / "summary.parquet").write_bytes(b"not parquet" * 20),
        ["summary.parquet is not a readable Parquet table"],
    ),
    "missing-influence": (lambda r: (r / "influence.parquet").unlink(), ["influence.parquet is missing"]),
    "newer-version": (
        lambda r: edit_run_json(r, schema_version=SCHEMA_VERSION + 1),
        [
            f"run.json has schema_version {SCHEMA_VERSION + 1}, but forward_influence",
            f"reads schema_version {SCHEMA_VERSION}",
            "re-run fi-measure with this version",
        ],
    ),
    "unversioned-other-layout": (
        lambda r: (
            edit_run_json(r, schema_version=None),
            pd.read_parquet(r / "summary.parquet").drop(columns="fi_far").to_parquet(r / "summary.parquet"),
        ),
        ["no schema_version", "lacks columns ['fi_far']", "re-run fi-measure"],
    ),
    "corrupt-run-json": (
        lambda r: (r / "run.json").write_text('{"status": "compl'),
        ["run.json is unreadable", "re-run fi-measure"],
    ),
}


def test_run_dir_round_trip_and_unversioned_runs(tmp_path):
    run = tiny_run(tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["schema_version"] == SCHEMA_VERSION
    res = MeasureResult.load(run)
    assert len(res.summary) == 2
    edit_run_json(run, schema_version=None)  # a run written before versioning, same layout: read as current
    pd.testing.assert_frame_equal(MeasureResult.load(run).summary, res.summary)


def test_version_2_run_is_read_with_its_buckets_recomputed_from_tau(tmp_path):
    """Schema 2 counted split-mode near/far from the source: its stored summary is never read."""
    from forward_influence.store.tables import summarize_influence

    run = tiny_run(tmp_path / "run")
    edit_run_json(run, schema_version=2, distance_from=None)
    stored = pd.read_parquet(run / "summary.parquet")
    stored.assign(fi_near=999.0, fi_far=999.0).to_parquet(run / "summary.parquet")  # what a v2 run may hold
    res = MeasureResult.load(run)
    pd.testing.assert_frame_equal(res.summary, summarize_influence(res.influence), check_dtype=False)
    assert (res.summary.fi_near == res.summary.fi_total).all()  # every target within near = 32 of tau = N


def test_previous_version_checkpoint_is_not_resumed(tmp_path):
    store = PartStore(tmp_path)
    store.write(0, {"t": pd.DataFrame({"a": [1]})}, {"doc_id": "d0"})
    assert store.done(0, "d0") and "schema_version" not in store.read(0)[1]
    meta = store.path(0) / "meta.json"
    meta.write_text(json.dumps({"doc_id": "d0"}))  # a checkpoint written by schema 2 (no version stamp)
    assert not store.done(0, "d0")
    meta.write_text(json.dumps({"doc_id": "d0", "schema_version": SCHEMA_VERSION - 1}))
    assert not store.done(0, "d0")


@pytest.mark.parametrize("mode", ["split", "sliding"])
def test_buckets_count_from_the_eviction_time_in_both_modes(mode):
    """The convention, pinned: targets 50, 100 and 200 queries after the source are 10, 60 and 160 after its eviction:
    near (d_tau <= 32), mid and far (d_tau > 128). Counted from the source they would be mid, mid and far."""
    from forward_influence.store.tables import summarize_influence

    inf = pd.DataFrame(
        {
            "doc_id": "d",
            "mode": mode,
            "split_pos": pd.array([100 if mode == "split" else pd.NA] * 3, dtype="Int64"),
            "source_pos": 60,
            "layer": pd.array([pd.NA] * 3, dtype="Int64"),
            "kv_head": pd.array([pd.NA] * 3, dtype="Int64"),
            "target_pos": [110, 160, 260],
            "distance": [50, 100, 200],
            "distance_tau": [10, 60, 160],
            "kl": [1.0, 2.0, 4.0],
        }
    )
    s = summarize_influence(inf, near=32, far=128).iloc[0]
    assert (s.fi_near, s.fi_mid, s.fi_far, s.fi_total) == (1.0, 2.0, 4.0, 7.0)


@pytest.mark.parametrize("case", BAD_RUNS)
def test_bad_run_dir_one_line(case, tmp_path):
    run = tiny_run(tmp_path / "run")
    damage, needles = BAD_RUNS[case]
    damage(run)
    with pytest.raises(InputError) as e:
        MeasureResult.load(run)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


# --------------------------------------------------------------- the commands
ENTRIES = {
    "fi-measure": "forward_influence.cli.measure",
    "fi-bench": "forward_influence.cli.bench",
    "fi-analyze": "forward_influence.cli.analyze",
}


def cli(prog: str, argv: list[str], capsys) -> tuple[int, str]:
    entry = importlib.import_module(ENTRIES[prog]).entry
    with pytest.raises(SystemExit) as e:
        entry(argv)
    return e.value.code, capsys.readouterr().err


def assert_one_line(prog: str, code: int, err: str, needles: list[str]) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert all(n in lines[0] for n in needles), lines[0]


@pytest.mark.parametrize("case", [*BAD_FILES, "read-failure-midway", "vanished"])
def test_fi_measure_bad_doc(case, tmp_path, monkeypatch, capsys):
    if case in BAD_FILES:
        doc, needles = write_bad(tmp_path, case, monkeypatch)
    else:
        doc = tmp_path / "doc.jsonl"
        doc.write_text(GOOD_LINE * 2)
        (failing_midway if case == "read-failure-midway" else vanishing)(monkeypatch)
        needles = [str(doc), "read failed at byte" if case == "read-failure-midway" else "not found"]
    out = tmp_path / "fresh" / "out"
    code, err = cli("fi-measure", ["--doc", str(doc), "--out", str(out)], capsys)
    assert_one_line("fi-measure", code, err, needles)
    assert not out.exists() and not out.parent.exists()


BENCH_INPUTS = {
    "fidelity-doc": (["--task", "fidelity", "--doc"], "latin1-jsonl-line2"),
    "qa-doc": (["--task", "qa", "--doc"], "latin1-squad"),
    "qa-doc-too-large": (["--task", "qa", "--doc"], "too-large-json"),
    "ifeval-data-nul": (["--task", "ifeval", "--ifeval-data"], "nul-txt"),
    "ifeval-data-latin1": (["--task", "ifeval", "--ifeval-data"], "latin1-ifeval-line2"),
}
BAD_FILES_IFEVAL = {
    "nul-txt": ("prompts.jsonl", b"abc\x00def", ["NUL character at byte 3"]),
    "latin1-ifeval-line2": (
        "prompts.jsonl",
        IFEVAL_LINE.encode() + latin1({"prompt": "é"}),
        [f"not UTF-8 at byte {len(IFEVAL_LINE.encode()) + latin1({'prompt': 'é'}).index(0xE9)}", "iconv"],
    ),
}


@pytest.mark.parametrize("case", BENCH_INPUTS)
def test_fi_bench_bad_input_file(case, tmp_path, monkeypatch, capsys):
    flags, file_case = BENCH_INPUTS[case]
    if case.startswith("ifeval"):
        name, raw, needles = BAD_FILES_IFEVAL[file_case]
        path = tmp_path / name
        path.write_bytes(raw)
        needles = [str(path), *needles]
    else:
        path, needles = write_bad(tmp_path, file_case, monkeypatch)
    out = tmp_path / "fresh" / "out"
    code, err = cli("fi-bench", [*flags, str(path), "--out", str(out), "--methods", "full"], capsys)
    assert_one_line("fi-bench", code, err, needles)
    assert not out.parent.exists()


@pytest.mark.parametrize("case", [*BAD_RUNS, "not-a-directory"])
def test_fi_bench_bad_fi_run(case, tmp_path, capsys):
    run = tmp_path / "run"
    if case == "not-a-directory":
        needles = ["--fi-run", "is not a directory"]
    else:
        tiny_run(run)
        damage, needles = BAD_RUNS[case]
        damage(run)
    out = tmp_path / "fresh" / "out"
    code, err = cli("fi-bench", ["--task", "fidelity", "--fi-run", str(run), "--out", str(out)], capsys)
    assert_one_line("fi-bench", code, err, needles)
    assert not out.parent.exists()


@pytest.mark.parametrize("case", BAD_RUNS)
def test_fi_analyze_bad_run_dir(case, tmp_path, capsys):
    run = tiny_run(tmp_path / "run")
    damage, needles = BAD_RUNS[case]
    damage(run)
    code, err = cli("fi-analyze", [str(run)], capsys)
    assert_one_line("fi-analyze", code, err, needles)
    assert not (run / "analysis").exists() and not [p for p in run.iterdir() if p.name.startswith(".analysis")]


def bench_run_dir(out: Path, **meta) -> Path:
    """A finished fi-bench run directory of the default config, with hand-made tables."""
    from forward_influence.bench import BenchConfig
    from forward_influence.bench.summary import summarize_bench

    out.mkdir()
    results = pd.DataFrame(
        {
            "task": "fidelity",
            "sample_id": ["s0", "s1"],
            "method": "full",
            "budget": 0.2,
            "kl": [0.0, 0.0],
            "delta_nll": [0.0, 0.0],
            "seconds": [1.0, 1.0],
        }
    )
    results.to_parquet(out / "results.parquet")
    summarize_bench(results, 50).to_parquet(out / "summary.parquet")
    (out / "run.json").write_text(
        json.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "status": "complete",
                "config": BenchConfig().to_dict(),
                "samples": ["s0", "s1"],
                "methods": ["full"],
                "budgets": [0.2],
                **meta,
            }
        )
    )
    return out


@pytest.mark.parametrize("case", ["truncated-results", "other-version", "unversioned-other-layout"])
def test_fi_bench_reads_its_run_dir_checked(case, tmp_path, capsys):
    from forward_influence.bench.report import write_report

    out = bench_run_dir(tmp_path / "b")
    if case == "truncated-results":
        truncate(out / "results.parquet")
        needles = ["results.parquet is not a readable Parquet table", "re-run fi-bench"]
    elif case == "other-version":
        edit_run_json(out, schema_version=0)
        needles = [
            "run.json has schema_version 0, but",
            f"reads schema_version {SCHEMA_VERSION}",
            "re-run fi-bench with this version",
        ]
    else:
        edit_run_json(out, schema_version=None)
        pd.read_parquet(out / "summary.parquet").drop(columns="mean").to_parquet(out / "summary.parquet")
        needles = ["no schema_version", "lacks columns ['mean']"]
    with pytest.raises(InputError) as e:
        write_report(out)
    assert all(n in str(e.value) for n in needles), str(e.value)
    code, err = cli("fi-bench", ["--out", str(out)], capsys)  # a rerun resumes from the directory
    assert_one_line("fi-bench", code, err, needles)


# --------------------------------------------------------------- permissions
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_output_dirs_follow_the_umask(tmp_path, umask_022):
    run = tiny_run(tmp_path / "new" / "run")
    assert mode(run) == mode(run.parent) == 0o755
    store = PartStore(run)
    store.write(0, {"t": pd.DataFrame({"a": [1]})}, {"doc_id": "d0"})
    assert mode(store.root) == mode(store.path(0)) == 0o755
    os.umask(0o077)
    assert mode(fresh_dir(tmp_path, ".x-")) == 0o700  # the umask decides, not a fixed mode


#: Values computed on another machine (the fixture's checkpointed document) agree to float32 rounding
#: carried through a forward: relative 1e-4, absolute 1e-6 (nats: KL of ~0.005 moves by ~1e-7).
OTHER_MACHINE_RTOL = 1e-4
OTHER_MACHINE_ATOL = 1e-6


def test_a_run_interrupted_under_the_previous_code_resumes(tmp_path, monkeypatch):
    """tests/data/resume_8d6df18: a tiny-model run interrupted after its first document by the code
    before the registry refactor (commit 8d6df18; issue 24, item 11). The new code resumes it — the
    checkpoint of document 0 is read, not measured again — and ends with the tables of a fresh run."""
    import shutil

    from conftest import TinySource

    from forward_influence.measurement.run import measure

    fixture = Path(__file__).resolve().parents[1] / "data" / "resume_8d6df18"
    shutil.copytree(fixture, tmp_path / "old")
    monkeypatch.chdir(tmp_path / "old")
    kw = dict(
        doc="docs.jsonl",
        words=False,
        progress=False,
        report=False,
        batch_size=4,
        n_prefix=(24,),
        n_future=16,
        window=8,
        stride=3,
    )
    assert json.loads(Path("run/run.json").read_text())["git_sha"].startswith("8d6df18")
    resumed = measure(MeasureConfig(out="run", **kw), source=TinySource())
    assert [bool(d.get("resumed")) for d in resumed.meta["per_document"]] == [True, False]
    fresh = measure(MeasureConfig(out=str(tmp_path / "fresh"), **kw), source=TinySource())
    for name in ("tokens", "influence", "summary", "source_signals"):
        old, new = getattr(resumed, name), getattr(fresh, name)
        before = pd.read_parquet(fixture / "run" / ".parts" / "00000" / f"{name}.parquet").columns
        shared = [c for c in new.columns if c in before]  # signals added since 8d6df18 were not measured then
        # the checkpointed document was computed on another machine (float kernels may round differently
        # there); the document measured here must match bit for bit
        first = old["doc_id"] == old["doc_id"].iloc[0]
        pd.testing.assert_frame_equal(
            old.loc[first, shared],
            new.loc[first, shared],
            check_exact=False,
            rtol=OTHER_MACHINE_RTOL,
            atol=OTHER_MACHINE_ATOL,
            obj=name,
        )
        pd.testing.assert_frame_equal(old.loc[~first, shared], new.loc[~first, shared], check_exact=True, obj=name)
