"""fi-measure and fi-bench on a local Ray cluster (issue 19).

One module-scoped cluster on loopback: 2 CPUs and a custom resource
``fi_gpu`` standing in for ``GPU``, so the GPU actor path runs on the CPU.
Tiny models are built in the workers from :class:`conftest.TinySource`; the
tests of :class:`TestSharedPool` share one pool of two workers. Workers run
with the driver's thread count and batch size, so their tables must equal
the single-process tables exactly.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TinySource  # noqa: E402

from forward_influence import MeasureConfig
from forward_influence.bench import BenchConfig, run_bench  # noqa: E402
from forward_influence.errors import InputError  # noqa: E402
from forward_influence.execution.cluster import ClusterSpec, RayPool  # noqa: E402
from forward_influence.measurement.run import measure  # noqa: E402

# "~" makes the fault source raise; "^" makes the workers slow (time to kill one mid-unit).
SOURCE = TinySource(fault="raise", delay=0.25, delay_char="^")


def small(docs: Path, **kw) -> MeasureConfig:
    base = dict(
        doc=str(docs),
        words=False,
        progress=False,
        report=False,
        batch_size=4,
        n_prefix=(24, 48),
        n_future=16,
        window=8,
        stride=3,
    )
    return MeasureConfig(**{**base, **kw})


def spec(**kw) -> ClusterSpec:
    base = dict(
        gpu_resource="fi_gpu", threads=torch.get_num_threads(), max_restarts=2, max_task_retries=1, max_attempts=2
    )
    return ClusterSpec("local:2", **{**base, **kw})


from helpers.distributed import (  # noqa: E402, F401, F811
    ROOT,
    TABLES,
    TEXT,
    assert_same_tables,
    assert_within_recorded,
    cluster,
    docs,
    ray,
    text,
    write_docs,
)


class TestSharedPool:
    """Two tiny-model workers, started once for these tests."""

    @pytest.fixture(scope="class")
    def pool(self, cluster):
        with RayPool(spec(), SOURCE) as p:
            yield p

    @pytest.mark.parametrize("mode", ["split", "sliding"])
    def test_tables_equal_single_process(self, mode, pool, docs, tmp_path, monkeypatch):
        from forward_influence.measurement import strategies

        monkeypatch.setattr(strategies, "SLIDING_UNIT_SOURCES", 8)  # several units per document
        kw = {} if mode == "split" else dict(mode="sliding", delay=4, horizon=12)
        cfg = small(docs, out=str(tmp_path / "ray"), ray="local:2", **kw)
        got = measure(cfg, cluster=pool)
        want = measure(small(docs, **kw), source=SOURCE)
        assert_same_tables(want, got)
        meta = json.loads((tmp_path / "ray" / "run.json").read_text())
        assert meta["status"] == "complete" and meta["execution"]["backend"] == "ray"
        assert meta["execution"]["workers"] == 2 and meta["execution"]["actor"] == "fi_gpu"
        assert all(d["n_units"] >= 2 for d in meta["per_document"])
        assert meta["model"]["revision"] == "tiny" and meta["config"]["ray"] == "local:2"

    def test_other_batching_agrees_within_the_recorded_tolerance(self, pool, docs, tmp_path):
        """Sliding mode recomputes each batch's stretch: a worker batching 4 sources and a process batching
        1 differ first order, and only within the tolerance run.json records (issue 24, item 9)."""
        kw = dict(mode="sliding", delay=4, horizon=12)
        got = measure(small(docs, out=str(tmp_path / "ray"), ray="local:2", **kw), cluster=pool)
        want = measure(small(docs, batch_size=1, **kw), source=SOURCE)
        floor = assert_within_recorded(want, got)
        assert 0 < floor < 1e-9 and got.meta["reproducibility"]["threads"][0] == torch.get_num_threads()
        assert not (want.influence.kl.to_numpy() == got.influence.kl.to_numpy()).all()  # batching did move them

    def test_single_process_run_resumes_on_the_cluster(self, pool, docs, tmp_path, monkeypatch):
        from forward_influence.measurement import units

        out, calls, real = tmp_path / "r", [], units.MeasureJob.run

        def stop_at_third_unit(job, unit):
            calls.append(unit.name)
            if len(calls) == 3:  # document 0 (two splits) is checkpointed
                raise KeyboardInterrupt
            return real(job, unit)

        monkeypatch.setattr(units.MeasureJob, "run", stop_at_third_unit)
        with pytest.raises(KeyboardInterrupt):
            measure(small(docs, out=str(out)), source=SOURCE)
        monkeypatch.undo()
        got = measure(small(docs, out=str(out), ray="local:2"), cluster=pool)  # --ray is not part of the run's identity
        assert [bool(d.get("resumed")) for d in got.meta["per_document"]] == [True, False, False]
        assert_same_tables(measure(small(docs), source=SOURCE), got)

    def test_worker_killed_mid_unit_gives_equal_tables(self, pool, tmp_path):
        slow = write_docs(tmp_path / "slow.jsonl", {f"s{i}": text(i, 1 + i % 2).replace(" ", "^") for i in range(3)})
        killed: list[int] = []

        def kill_once(p: RayPool, event: str) -> None:
            if not killed and p.busy_workers():
                i = p.busy_workers()[0]
                killed.append(p.worker_pid(i))  # a remote method that answers while the worker runs its unit
                os.kill(killed[0], signal.SIGKILL)

        pool.on_event = kill_once
        try:
            got = measure(small(slow, out=str(tmp_path / "k")), cluster=pool)
        finally:
            pool.on_event = None
        assert killed and killed[0] not in [pool.worker_pid(i) for i in range(2)]
        assert got.meta["execution"]["worker_restarts"] >= 1 and got.meta["status"] == "complete"
        assert_same_tables(measure(small(slow), source=SOURCE), got)

    def test_unit_that_always_fails_leaves_the_run_partial(self, pool, tmp_path):
        bad = write_docs(tmp_path / "bad.jsonl", {"ok": text(0), "bad": "~" + text(1), "ok2": text(2)})
        out = tmp_path / "p"
        res = measure(small(bad, out=str(out)), cluster=pool)
        meta = json.loads((out / "run.json").read_text())
        assert meta["status"] == "partial" == res.meta["status"]
        assert sorted(f["unit"] for f in meta["failed_units"]) == ["bad N=24", "bad N=48"]
        assert all(f["attempts"] == 2 and "injected fault" in f["error"] for f in meta["failed_units"])
        assert set(res.summary.doc_id) == {"ok", "ok2"} and [d["doc_id"] for d in meta["per_document"]] == ["ok", "ok2"]
        assert (out / ".parts" / "00000").is_dir() and (out / ".parts" / "00002").is_dir()
        assert not (out / ".parts" / "00001").exists() and not (out / "tokens.parquet").exists()

    def test_cli_exit_1_names_the_failed_unit(self, pool, tmp_path, monkeypatch, capsys):
        import functools
        import importlib

        from forward_influence.cli.measure import entry

        m = importlib.import_module(
            "forward_influence.measurement.run"
        )  # the module (the package exports the function)
        bad = write_docs(tmp_path / "bad.jsonl", {"ok": text(0), "bad": "~" + text(1)})
        monkeypatch.setattr(m, "measure", functools.partial(m.measure, cluster=pool))
        with pytest.raises(SystemExit) as e:
            entry(
                [
                    "--doc",
                    str(bad),
                    "--out",
                    str(tmp_path / "o"),
                    "--ray",
                    "local:2",
                    "--no-words",
                    "--no-report",
                    "--n-prefix",
                    "48",
                    "--n-future",
                    "16",
                    "--stride",
                    "6",
                    "--window",
                    "8",
                    "--batch-size",
                    "4",
                ]
            )
        err = capsys.readouterr().err
        assert e.value.code == 1
        assert "unit bad N=48 failed after 2 attempts: RuntimeError: injected fault" in err and "status partial" in err

    def test_bench_equals_single_process(self, pool, docs, tmp_path):
        cfg = dict(
            task="fidelity",
            doc=str(docs),
            methods=("full", "snapkv", "h2o"),
            budgets=(0.5,),
            n_prefix=48,
            n_future=16,
            progress=False,
            report=False,
            bootstrap=50,
        )
        got = run_bench(BenchConfig(**cfg, ray="local:2", out=str(tmp_path / "b")), cluster=pool)
        want = run_bench(BenchConfig(**cfg), source=SOURCE)
        pd.testing.assert_frame_equal(want.drop(columns="seconds"), got.drop(columns="seconds"), check_exact=True)
        meta = json.loads((tmp_path / "b" / "run.json").read_text())
        assert meta["status"] == "complete" and meta["execution"]["workers"] == 2 and len(got) == 3 * 3


def test_unit_whose_worker_always_dies_is_reported_and_its_workers_replaced(cluster, tmp_path):
    docs = write_docs(tmp_path / "die.jsonl", {"ok": text(0), "die": "~" + text(1), "ok2": text(2)})
    cfg = small(docs, n_prefix=(48,), out=str(tmp_path / "d"))
    res = measure(cfg, cluster=spec(max_restarts=0, max_task_retries=0), source=TinySource(fault="exit"))
    assert res.meta["status"] == "partial" and set(res.summary.doc_id) == {"ok", "ok2"}
    (failed,) = res.meta["failed_units"]
    assert failed["unit"] == "die N=48" and failed["attempts"] == 2
    assert failed["error"] == "ActorDiedError: The actor is dead because its worker process has died."
    assert res.meta["execution"]["actors_replaced"] == 2 and res.meta["execution"]["units_requeued"] == 1


def test_workers_that_disagree_are_refused(cluster):
    with pytest.raises(InputError, match=r"disagree on model.revision: 'pid\d+' on worker 0"):
        with RayPool(spec(), TinySource(revision="pid")):
            pass


def test_bad_model_in_a_worker_is_one_line(cluster):
    from forward_influence.execution.pool import ModelSource

    with pytest.raises(InputError, match="a Ray worker could not load the model: InputError: unknown model 'gpt-17'"):
        with RayPool(spec(workers=1), ModelSource("gpt-17")):
            pass
