#!/usr/bin/env python
"""Benchmark: the same fi-measure run single-process, on ``--ray local:1`` and on ``local:2``.

One run on the embedded model (or ``--model``) on this machine:

* ``single`` — :func:`forward_influence.measurement.run` in this process, torch with
  ``--threads`` threads (default: all cores);
* ``local:1`` — one Ray worker with the same thread count: the overhead of
  the Ray path (units shipped to an actor, results shipped back);
* ``local:2`` — two Ray workers with ``threads // 2`` threads each: how two
  workers scale on the same cores.

Start-up (loading the model; starting Ray and its actors) is timed apart from
the run; the ratios compare run times only. The three are interleaved
(after an untimed warm-up on one document, ``--repeats`` rounds of single,
local:1, local:2; the median of each is used), because a shared machine's speed drifts by tens of percent within
minutes; the Ray workers stay up between rounds. Tables are checked against
the single-process run: exactly for ``local:1`` (same batch size and thread
count), within 1e-9 relative for ``local:2`` (other thread count).

Then the driver's side of a study-scale document: one split of N = 4096,
F = 256 at every token (1,048,576 influence rows) assembled and checkpointed
(unpickled as Ray would, :func:`forward_influence.measurement.units.assemble_document`,
``PartStore.write``), as rows per second: the ceiling on how many workers one driver can keep up with.

The last line is ``ray_overhead=X.XX scaling_2=Y.YY`` (run time of local:1
over single; of local:1 over local:2).

Usage: ``python scripts/bench_ray.py [--max-docs 4 --n-prefix 256 --n-future 128 --stride 4]``;
tiny check: ``--max-docs 2 --n-prefix 32 --n-future 16 --stride 8 --repeats 1 --driver-n 256``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; read when ray is imported

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from forward_influence import MeasureConfig
from forward_influence.execution.cluster import ClusterSpec, RayPool  # noqa: E402
from forward_influence.execution.pool import ModelSource  # noqa: E402
from forward_influence.measurement.run import measure  # noqa: E402
from forward_influence.store import schema  # noqa: E402
from forward_influence.store.results import PartStore  # noqa: E402

REL_TOL = 1e-9  # other thread count: KLs may differ in the last bits
TABLES = schema.TABLES


def max_rel_diff(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Largest relative difference of the float columns (structure must match)."""
    pd.testing.assert_frame_equal(a.select_dtypes(exclude="floating"), b.select_dtypes(exclude="floating"))
    fa, fb = a.select_dtypes("floating").to_numpy(float), b.select_dtypes("floating").to_numpy(float)
    both = np.isfinite(fa) & np.isfinite(fb)
    if not np.array_equal(np.isfinite(fa), np.isfinite(fb)):
        return float("inf")
    scale = np.maximum(np.abs(fa[both]), np.abs(fb[both]))
    diff = np.abs(fa[both] - fb[both])
    return float(np.max(np.where(scale > 0, diff / np.where(scale > 0, scale, 1), 0.0), initial=0.0))


def driver_rows_per_s(n: int, f: int) -> tuple[int, float, float]:
    """Assemble and checkpoint one synthetic document of ``n`` sources x ``f`` targets."""
    from forward_influence.measurement.documents import Document, TokenizedDocument
    from forward_influence.measurement.strategies import influence_frame
    from forward_influence.measurement.units import UnitResult, assemble_document

    t = n + f
    doc = TokenizedDocument(
        Document("synthetic", "x" * t), torch.zeros(t, dtype=torch.long), np.zeros((t, 2), dtype=np.int64), ["x"] * t
    )
    rng = np.random.default_rng(0)
    kl = rng.lognormal(-12, 3, size=(n, f))
    tokens = pd.DataFrame({"doc_id": pd.Series(["synthetic"] * t, dtype="string"), "pos": np.arange(t)})
    signals = {"tokens": tokens, "source_signals": tokens.assign(split_pos=pd.array([n] * t, dtype="Int64"))}
    cfg = MeasureConfig(n_prefix=(n,), n_future=f)
    frame = influence_frame(
        "synthetic", "split", n, range(n), np.broadcast_to(np.arange(n, t), kl.shape), kl, None, None, np.full(n, n)
    )
    blob = pickle.dumps(
        UnitResult(0, 0, frame, signals, np.zeros(f), True, np.zeros(f), 0, kl.size, 0.0, 0.0), protocol=5
    )  # what a worker sends (Ray: pickle 5)
    t1 = time.perf_counter()
    unit = pickle.loads(blob)
    tables, meta = assemble_document(cfg, doc, [unit])
    with tempfile.TemporaryDirectory() as d:
        PartStore(Path(d)).write(0, tables, meta)
        size = sum(p.stat().st_size for p in Path(d).rglob("influence.parquet"))
    t2 = time.perf_counter()
    return n * f, (n * f) / (t2 - t1), size / (n * f), len(blob) / (n * f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--doc", default=None, help="documents (default: the built-in SQuAD articles)")
    ap.add_argument("--max-docs", type=int, default=4)
    ap.add_argument("--n-prefix", type=int, default=256)
    ap.add_argument("--n-future", type=int, default=128)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--driver-n", type=int, default=4096, help="sources of the synthetic driver-side document")
    ap.add_argument("--driver-f", type=int, default=256)
    args = ap.parse_args()
    from forward_influence.runtime.host import retain_freed_memory

    retain_freed_memory()  # CPU timings as fi-measure runs (forward_influence.runtime.host)

    import ray

    torch.set_num_threads(args.threads)
    print(
        f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (a load above the core count "
        "slows multi-threaded torch far more than one-thread workers)"
    )
    cfg = MeasureConfig(
        model=args.model,
        doc=args.doc,
        max_docs=args.max_docs,
        n_prefix=(args.n_prefix,),
        n_future=args.n_future,
        stride=args.stride,
        batch_size=args.batch_size,
        words=False,
        progress=False,
        report=False,
        device="cpu",
    )
    source = ModelSource(args.model, device="cpu")
    t0 = time.perf_counter()
    lm = source()
    start = {"single": time.perf_counter() - t0}
    t0 = time.perf_counter()
    root = str(Path(__file__).resolve().parents[1])  # workers import this tree
    ray.init(
        num_cpus=2 * args.threads,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}},
    )
    start["ray_init"] = time.perf_counter() - t0
    specs = {
        "local:1": ClusterSpec("local:1", threads=args.threads),
        "local:2": ClusterSpec("local:2", threads=max(1, args.threads // 2)),
    }
    pools = {}
    try:
        for name, spec in specs.items():
            t0 = time.perf_counter()
            pools[name] = RayPool(spec, source, device="cpu").__enter__()
            start[name] = time.perf_counter() - t0
        print("start-up s: " + ", ".join(f"{k} {v:.1f}" for k, v in start.items()))
        times: dict[str, list[float]] = {"single": [], "local:1": [], "local:2": []}
        results = {}
        warm = dataclasses.replace(cfg, max_docs=1)  # first calls import and allocate: not timed
        for name in times:
            measure(warm, model=lm) if name == "single" else measure(warm, cluster=pools[name])
        for r in range(args.repeats):
            for name in times:
                t0 = time.perf_counter()
                res = measure(cfg, model=lm) if name == "single" else measure(cfg, cluster=pools[name])
                times[name].append(time.perf_counter() - t0)
                results[name] = res
                print(f"round {r + 1} {name:8s} {times[name][-1]:7.2f} s  ({len(res.summary)} ablations)", flush=True)
    finally:
        for p in pools.values():
            p.__exit__(None, None, None)
        ray.shutdown()
    for name in ("local:1", "local:2"):
        diffs = {t: max_rel_diff(getattr(results["single"], t), getattr(results[name], t)) for t in TABLES}
        worst = max(diffs.values())
        exact = all(getattr(results["single"], t).equals(getattr(results[name], t)) for t in TABLES)
        verdict = "exact" if exact else ("within 1e-9" if worst <= REL_TOL else "DIFFERENT")
        print(f"tables {name} vs single: {verdict} (max relative difference {worst:.1e})")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        "median run s: "
        + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
        + f"; load average at end {os.getloadavg()[0]:.1f}"
    )
    rows, rate, per_row, sent = driver_rows_per_s(args.driver_n, args.driver_f)
    print(
        f"driver: {rows} influence rows received, assembled and checkpointed at {rate:,.0f} rows/s "
        f"({sent:.0f} bytes/row sent by the worker, {per_row:.1f} bytes/row in parquet)"
    )
    print(f"ray_overhead={med['local:1'] / med['single']:.2f} scaling_2={med['local:1'] / med['local:2']:.2f}")


if __name__ == "__main__":
    main()
