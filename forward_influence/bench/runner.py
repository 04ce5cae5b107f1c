"""Run every method x budget on the same samples; checkpoint per sample.

For a prefill task each sample's context is prefilled once per group of
methods that read the same inputs (:meth:`CompressedCache.can_fork`, from each
method's :class:`~forward_influence.compress.base.Needs`: InfoKV's prefill
serves every method but H2O and Expected Attention), the full-cache reference
is computed once, and every (method, budget) is a fork of that prefill, cut
and scored. A method whose result does not depend on the budget (``budget_free``:
the full cache) is scored once and repeated per budget; one that needs
measured FI (``inputs``) runs only with ``--fi-run``. With ``--fi-run`` every cut is also scored
against the measured single-token FI of its document (share of FI kept; FI of
what it dropped, for the additivity check), and ``fi_oracle`` keeps the
measured top set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from forward_influence.bench.config import BenchConfig
from forward_influence.bench.ifeval import IFEval
from forward_influence.bench.tasks import Fidelity, ReadingQA, Retrieval, Sample
from forward_influence.compress import CompressedCache, FIOracle, Full
from forward_influence.compress.base import compressor_class
from forward_influence.compress.specs import method_spec
from forward_influence.errors import InputError
from forward_influence.execution.choose import open_pool
from forward_influence.execution.pool import ModelSource, Pool
from forward_influence.hf.models import LoadedModel
from forward_influence.store.results import PartStore, write_json_atomic, write_parquet_atomic
from forward_influence.store.runs import resume_state, run_meta, start_run


def build_task(cfg: BenchConfig) -> Any:
    if cfg.task == "fidelity":
        return Fidelity(
            doc=cfg.doc,
            n_prefix=cfg.n_prefix,
            n_future=cfg.n_future,
            n_samples=cfg.n_samples,
            far=cfg.far,
            doc_ids=cfg.doc_ids,
        )
    if cfg.task == "retrieval":
        return Retrieval(kinds=cfg.kinds, lengths=cfg.lengths, depths=cfg.depths)
    if cfg.task == "qa":
        return ReadingQA(path=cfg.doc, max_context=cfg.max_context, n_samples=cfg.n_samples)
    return IFEval(
        path=cfg.ifeval_data, n_samples=cfg.n_samples, max_new_tokens=cfg.max_new_tokens, interval=cfg.interval
    )


class FITable:
    """Measured single-token FI per document (from an ``fi-measure`` run)."""

    def __init__(self, run_dir: str | Path, cfg: BenchConfig):
        from forward_influence.store.results import MeasureResult

        if not Path(run_dir).is_dir():
            raise InputError(f"--fi-run {run_dir} is not a directory; give the --out directory of an fi-measure run")
        res = MeasureResult.load_if_complete(run_dir)
        if res is None:
            raise InputError(f"--fi-run {run_dir} is not a finished fi-measure output dir; run fi-measure there first")
        mc = res.config
        if mc.mode != "split" or mc.method != "exact":
            raise InputError(f"--fi-run {run_dir} must be an exact split-mode run (it is {mc.method} {mc.mode})")
        if tuple(mc.n_prefix) != (cfg.n_prefix,) or mc.n_future != cfg.n_future:
            raise InputError(
                f"--fi-run {run_dir} measured N={list(mc.n_prefix)}, F={mc.n_future}: use "
                f"--n-prefix {mc.n_prefix[0]} --n-future {mc.n_future}"
            )
        s = res.summary
        self.summary = s[s["layer"].isna()]
        self.stride = mc.stride if mc.positions is None else None

    def oracle(self, doc_id: str, budget: float) -> FIOracle | None:
        if not (self.summary["doc_id"] == doc_id).any():
            return None
        return FIOracle.from_result(self.summary, doc_id, budget=budget)

    def kept_metrics(self, cache: CompressedCache, fi: torch.Tensor, n: int) -> dict[str, float]:
        """Share of the measured FI kept and FI of what was dropped, averaged over (layer, KV head)."""
        fi = torch.cat([fi.double(), torch.full((max(0, n - fi.shape[0]),), float("nan"), dtype=torch.float64)])[:n]
        measured = torch.isfinite(fi)
        fi = torch.nan_to_num(fi, nan=0.0)
        total = float(fi.sum())
        kept = []
        for pos in cache.positions:
            for h in range(pos.shape[0]):
                kept.append(float(fi[pos[h].cpu()].sum()))
        kept_mean = float(np.mean(kept))
        scale = self.stride or 1
        return {
            "fi_kept_share": kept_mean / total if total > 0 else float("nan"),
            "fi_dropped": (total - kept_mean) * scale,
            "fi_measured": float(measured.sum()),
        }


def _rows(
    s: Sample, method: str, budget: float, metrics: dict[str, float], seconds: float, task: str
) -> dict[str, Any]:
    meta = {k: v for k, v in s.meta.items() if isinstance(v, (int, float, str))}
    return {
        "task": task,
        "sample_id": s.sample_id,
        "method": method,
        "budget": float(budget),
        **meta,
        **metrics,
        "seconds": seconds,
    }


def _build(method: str, budget: float, seed: int, fi: FIOracle | None, model_file: str | None = None) -> Any:
    """``method`` as the bench runs it (None when an input it declares is missing: an oracle without FI)."""
    name, hyper = method_spec(method)
    return compressor_class(name).for_run(
        seed=seed, measured_fi=None if fi is None else fi.fi, model_file=model_file, **hyper, budget=budget
    )


def run_prefill_sample(
    lm: LoadedModel,
    task: Any,
    s: Sample,
    methods: list[str],
    budgets: tuple[float, ...],
    seed: int,
    fi: FITable | None,
    model_file: str | None = None,
) -> list[dict[str, Any]]:
    model, tok = lm.model, lm.tokenizer
    n = int(s.context.shape[0])
    oracle_fi = fi.oracle(s.meta.get("doc_id", s.sample_id), 1.0) if fi is not None else None
    built = {m: _build(m, 1.0, seed, oracle_fi, model_file) for m in methods}
    available = [m for m in methods if built[m] is not None]
    # the method whose prefill records the most first: its cache serves the most others, whatever the given order
    order = sorted(available, key=lambda m: built[m].needs().richness(), reverse=True)
    bases: list[CompressedCache] = []

    def base_for(comp: Any) -> CompressedCache:
        for b in bases:
            if b.can_fork(comp):
                return b
        b = CompressedCache(model, comp)
        b.extend(s.context.to(model.device))
        bases.append(b)
        return b

    t0 = time.perf_counter()
    ref = task.reference(base_for(built[order[0]]).fork(Full()), s, tok)
    ref_seconds = time.perf_counter() - t0
    rows = []
    for method in order:
        once = None  # the metrics of a method whose result does not depend on the budget
        for budget in budgets:
            t0 = time.perf_counter()
            if once is not None:
                rows.append(_rows(s, method, budget, once, 0.0, task.name))
                continue
            comp = _build(method, budget, seed, oracle_fi, model_file)
            cache = base_for(comp).fork(comp)
            cache.cut(budget * n)
            metrics = task.score(cache, s, ref, tok)
            if oracle_fi is not None:
                metrics.update(fi.kept_metrics(cache, oracle_fi.fi, n))
            if comp.budget_free:
                once = metrics
            extra = ref_seconds if comp.budget_free else 0.0  # the reference is the full cache's forward
            rows.append(_rows(s, method, budget, metrics, time.perf_counter() - t0 + extra, task.name))
    return rows


def run_decoding_sample(
    lm: LoadedModel,
    task: IFEval,
    s: Sample,
    methods: list[str],
    budgets: tuple[float, ...],
    seed: int,
    model_file: str | None = None,
) -> list[dict[str, Any]]:
    model, tok = lm.model, lm.tokenizer
    t0 = time.perf_counter()
    ref = task.reference(model, s, Full(), tok)
    ref_seconds = time.perf_counter() - t0
    rows = []
    for method in methods:
        comp = _build(method, 1.0, seed, None, model_file)
        if comp is None:  # measured FI exists only for a prefill
            continue
        once = None
        for budget in budgets:
            t0 = time.perf_counter()
            if comp.budget_free:
                once = once or task.score_tokens(s, ref["tokens"], ref, tok)  # no second generation
                rows.append(_rows(s, method, budget, once, ref_seconds, task.name))
                continue
            metrics = task.score(model, s, comp, budget, ref, tok)
            rows.append(_rows(s, method, budget, metrics, time.perf_counter() - t0, task.name))
    return rows


@dataclass(frozen=True)
class BenchUnit:
    """One sample as a work unit (its checkpoint is ``.parts/NNNNN``, ``index``)."""

    index: int
    sample: Sample

    @property
    def name(self) -> str:
        return self.sample.sample_id


@dataclass
class BenchJob:
    """The benchmark as a pool job (:mod:`forward_influence.execution.pool`): every
    method and budget on one sample."""

    cfg: BenchConfig
    task: Any
    methods: list[str]
    budgets: tuple[float, ...]
    fi: FITable | None

    def setup(self, lm: LoadedModel) -> None:
        self._lm = lm

    def run(self, unit: BenchUnit) -> pd.DataFrame:
        if self.cfg.setting == "prefill":
            rows = run_prefill_sample(
                self._lm,
                self.task,
                unit.sample,
                self.methods,
                self.budgets,
                self.cfg.seed,
                self.fi,
                self.cfg.distilled_model,
            )
        else:
            rows = run_decoding_sample(
                self._lm, self.task, unit.sample, self.methods, self.budgets, self.cfg.seed, self.cfg.distilled_model
            )
        return pd.DataFrame(rows)


def run_bench(
    cfg: BenchConfig, model: LoadedModel | None = None, *, source: Any = None, cluster: Any = None
) -> pd.DataFrame:
    """Run ``cfg``; with ``cfg.out`` checkpoint per sample (a rerun resumes)
    and write ``results.parquet``, ``summary.parquet`` and ``run.json``.

    Parameters
    ----------
    model : LoadedModel, optional
        A model already loaded (not with Ray).
    source, cluster
        As for :func:`forward_influence.measurement.run.measure` (``cfg.ray``: samples
        run on Ray workers).

    Returns
    -------
    pandas.DataFrame
        One row per (sample, method, budget) with the task's metrics. When
        samples failed (Ray only), ``run.json`` says ``partial`` and names
        them, and only the finished samples are returned.
    """
    cfg = cfg.validate()
    methods = cfg.method_names()
    budgets = cfg.resolved_budgets()
    out, finished = resume_state(cfg.out, cfg, "fi-bench")
    if finished:
        from forward_influence.bench.summary import load_run

        return load_run(out)[1]
    fi = FITable(cfg.fi_run, cfg) if cfg.fi_run else None
    task = build_task(cfg)
    task.read()  # input files before the model: bad input fails fast
    source = source or ModelSource(cfg.model, device=cfg.device, dtype=cfg.dtype)
    with open_pool(cfg.ray, model, source, cfg.device, cluster) as pool:
        samples = _samples(cfg, task, pool.tokenizer)
        meta = run_meta(cfg, pool, methods=methods, budgets=list(budgets), samples=[s.sample_id for s in samples])
        store = start_run(out, meta)
        t0 = time.perf_counter()
        parts, failed = _run_samples(cfg, pool, BenchJob(cfg, task, methods, budgets, fi), samples, store)
        meta["execution"] = pool.execution()
    finished_parts = [p for p in parts if p is not None]
    results = pd.concat(finished_parts, ignore_index=True) if finished_parts else pd.DataFrame()
    if out is not None:
        meta.update(
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            seconds_total=round(time.perf_counter() - t0, 3),
            failed_units=failed,
        )
        _write_outputs(cfg, out, meta, results, failed, store)
    results.attrs["failed_units"] = failed  # set after writing: parquet would keep it
    return results


def _samples(cfg: BenchConfig, task: Any, tokenizer: Any) -> list[Sample]:
    """The task's samples, at most ``--n-samples`` (none: an input error)."""
    samples = task.prepare(tokenizer, cfg.seed)
    if cfg.n_samples is not None:
        samples = samples[: cfg.n_samples]
    if not samples:
        raise InputError(f"--task {cfg.task} produced no samples; check --doc / --n-samples")
    return samples


def _run_samples(
    cfg: BenchConfig, pool: Pool, job: BenchJob, samples: list[Sample], store: PartStore | None
) -> tuple[list[pd.DataFrame | None], list[dict[str, Any]]]:
    """Run the samples not checkpointed yet; returns every sample's results
    (None where it failed) and the failed units."""
    parts: list[pd.DataFrame | None] = [None] * len(samples)
    units = []
    for k, s in enumerate(samples):
        if store is not None and store.done(k, s.sample_id):
            parts[k] = store.read(k)[0]["results"]
        else:
            units.append(BenchUnit(k, s))
    failed = []
    bar = tqdm(total=len(units), desc=f"fi-bench {cfg.task}", disable=not cfg.progress)
    for oc in pool.map(job, units):
        bar.update(1)
        if oc.error is not None:
            failed.append({"unit": oc.unit.name, "error": oc.error, "attempts": oc.attempts})
            continue
        if store is not None:
            store.write(oc.unit.index, {"results": oc.result}, {"doc_id": oc.unit.name})
        parts[oc.unit.index] = oc.result
    bar.close()
    return parts, failed


def _write_outputs(
    cfg: BenchConfig,
    out: Path,
    meta: dict[str, Any],
    results: pd.DataFrame,
    failed: list[dict[str, Any]],
    store: PartStore,
) -> None:
    """``run.json`` (partial: the finished samples stay in ``.parts`` for the
    rerun), or the tables, the summary and ``run.json`` (complete)."""
    if failed:
        write_json_atomic(out / "run.json", {**meta, "status": "partial"})
        return
    from forward_influence.bench.summary import gap_closed, summarize_bench

    write_parquet_atomic(results, out / "results.parquet")
    write_parquet_atomic(summarize_bench(results, cfg.bootstrap, cfg.seed), out / "summary.parquet")
    gap = gap_closed(results, cfg.bootstrap, cfg.seed)
    if len(gap):  # fidelity with the distilled method and the FI oracle
        write_parquet_atomic(gap, out / "gap_closed.parquet")
    write_json_atomic(out / "run.json", {**meta, "status": "complete"})
    store.clear()
