"""Run a Forward Influence measurement over documents: the library behind ``fi-measure``.

The driver: it reads the documents, tokenises them with the model's
tokenizer, cuts each into work units (:mod:`forward_influence.measurement.units`), has a
pool run them (:mod:`forward_influence.execution.pool`: this process, or Ray
workers with ``--ray``), assembles each document from its units and
checkpoints it, and writes the tables and ``run.json``. Units that keep
failing (Ray only) leave the run ``partial``, named in ``run.json``; a rerun
of the same command resumes from the checkpoints and retries them.

>>> from forward_influence import MeasureConfig
>>> from forward_influence.measurement.run import measure       # doctest: +SKIP
>>> res = measure(MeasureConfig(n_prefix=(128,), n_future=64, max_docs=1))  # doctest: +SKIP
>>> res.summary.sort_values("fi_total").tail()                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from forward_influence.config import MeasureConfig
from forward_influence.errors import InputError
from forward_influence.execution.choose import open_pool
from forward_influence.execution.pool import ModelSource, Pool
from forward_influence.hf.models import LoadedModel
from forward_influence.measurement.collector import registered
from forward_influence.measurement.documents import TokenizedDocument, load_documents, tokenize
from forward_influence.measurement.meta import finish_meta, start_meta
from forward_influence.measurement.strategies import Strategy, strategy_for
from forward_influence.measurement.units import MeasureJob, UnitResult, assemble_document
from forward_influence.store import schema
from forward_influence.store.results import MeasureResult, PartStore, write_json_atomic
from forward_influence.store.runs import resume_state, start_run

log = logging.getLogger("forward_influence")


def _check_model(cfg: MeasureConfig, prov: dict[str, Any]) -> None:
    n_layers, n_kv = prov["n_layers"], prov["n_kv_heads"]
    if cfg.rep_layer >= n_layers:
        raise InputError(f"--rep-layer {cfg.rep_layer} out of range; the model has {n_layers} layers")
    if cfg.layer is not None and not 0 <= cfg.layer < n_layers:
        raise InputError(f"--layer {cfg.layer} out of range; the model has {n_layers} layers")
    if cfg.kv_head is not None and not 0 <= cfg.kv_head < n_kv:
        raise InputError(f"--kv-head {cfg.kv_head} out of range; the model has {n_kv} KV heads")


def _documents(docs: list[TokenizedDocument]) -> list[dict[str, Any]]:
    """``run.json``'s ``documents``: id, tokens and (generations) prompt tokens."""
    return [
        {"doc_id": d.doc.doc_id, "n_tokens": len(d), **({} if d.n_prompt is None else {"n_prompt": d.n_prompt})}
        for d in docs
    ]


def measure(
    config: MeasureConfig, model: LoadedModel | None = None, *, source: Any = None, cluster: Any = None
) -> MeasureResult:
    """Measure Forward Influence (and per-token signals) for every document.

    Parameters
    ----------
    config : MeasureConfig
        With ``config.out`` set, results are checkpointed per document into
        that directory and a rerun resumes; otherwise everything stays in
        memory. ``config.ray`` runs the units on a Ray cluster.
    model : LoadedModel, optional
        A model already loaded (e.g. in a notebook; not with Ray); else loaded from ``config``.
    source : callable, optional
        ``() -> LoadedModel`` for each worker (default: the model ``config`` names).
    cluster : forward_influence.execution.cluster.ClusterSpec, optional
        Ray settings beyond ``config.ray`` (workers, threads, retries, a
        stand-in GPU resource).

    Returns
    -------
    MeasureResult
        ``.tokens``, ``.influence``, ``.summary`` (and ``.token_layers``);
        ``.meta["status"]`` is ``"partial"`` when units failed (their names in
        ``.meta["failed_units"]``), and the tables hold the finished documents.

    Raises
    ------
    InputError
        Bad documents, flags, model, device or output directory, or Ray
        workers that disagree — before any output is written.
    """
    cfg = config.validate()
    strategy = strategy_for(cfg)
    strategy.check_config()
    docs = _input_documents(cfg)
    out, finished = resume_state(cfg.out, cfg)
    if finished:
        return MeasureResult.load(out)
    source = source or ModelSource(
        cfg.model, device=cfg.device, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation
    )
    with open_pool(cfg.ray, model, source, cfg.device, cluster) as pool:
        tdocs, extra = _prepare_documents(strategy, pool, docs, out)
        meta = start_meta(cfg, pool, _documents(tdocs), [spec.to_dict() for spec in registered()], extra)
        store = start_run(out, meta)
        t0, c0 = time.perf_counter(), time.process_time()
        done_docs, failed = _run_units(strategy, pool, tdocs, store)
        meta["execution"] = pool.execution()
    result = _result(cfg, meta, done_docs, failed, time.perf_counter() - t0, time.process_time() - c0)
    if out is not None and failed:
        write_json_atomic(out / "run.json", result.meta)  # the finished documents stay in .parts for the rerun
    elif out is not None:
        result.save(out)
        store.clear()
    return result


def _input_documents(cfg: MeasureConfig) -> list[Any]:
    """The documents of ``--doc`` (none with ``--generate``: they come from the
    model, once loaded); the generation source is checked first."""
    if cfg.generate is None:
        return load_documents(cfg.doc, max_docs=cfg.max_docs, doc_ids=cfg.doc_ids)
    from forward_influence.measurement.generations import check_source

    check_source(cfg.generate)  # before the model loads (the prompts themselves need its tokenizer)
    if cfg.ray is not None:
        raise InputError(
            "--generate runs on one machine: generate first without --ray, then measure its "
            "OUT/generations.jsonl with --generate OUT/generations.jsonl --ray ..."
        )
    return []


def _prepare_documents(
    strategy: Strategy, pool: Pool, docs: list[Any], out: Path | None
) -> tuple[list[TokenizedDocument], dict[str, Any]]:
    """Check the model, tokenize and check the documents (or generate them),
    check the spaCy model: everything that fails before the first unit runs.
    Returns the documents and ``run.json``'s extra fields."""
    cfg = strategy.cfg
    _check_model(cfg, pool.provenance)
    limit = strategy.document_limit()
    tdocs = [tokenize(pool.tokenizer, d, max_tokens=limit) for d in docs]
    for td in tdocs:
        why = strategy.problem(td)
        if why is not None:
            raise InputError(why)
    strategy.signal_config().check_ready()
    if cfg.generate is None:
        return tdocs, {}
    if pool.lm is None:
        raise InputError(
            "--generate runs on one machine: generate first without --ray, then measure its OUT/generations.jsonl on "
            "the cluster"
        )
    return _generated_documents(strategy, pool.lm, out)


def _result(
    cfg: MeasureConfig,
    meta: dict[str, Any],
    done_docs: list[Any],
    failed: list[dict[str, Any]],
    seconds: float,
    cpu_seconds: float,
) -> MeasureResult:
    """The finished documents' tables concatenated, with ``meta`` completed."""
    parts = [d for d in done_docs if d is not None]
    doc_meta = [m for _, m in parts]
    names = list(parts[0][0]) if parts else list(schema.TABLES)
    cat = {
        name: pd.concat([p[name] for p, _ in parts], ignore_index=True) if parts else pd.DataFrame() for name in names
    }
    meta = finish_meta(meta, cfg, doc_meta, failed, seconds, cpu_seconds)
    return MeasureResult(meta=meta, **cat)


def _generated_documents(
    strategy: Strategy, lm: LoadedModel, out: Path | None
) -> tuple[list[TokenizedDocument], dict[str, Any]]:
    """The generations of ``cfg.generate`` that this mode can measure (cut to
    the tokens it reads), and ``run.json``'s ``generation`` and ``skipped``.
    A generation too short is skipped with a warning; none usable raises
    :class:`InputError` and removes an ``out`` this call created."""
    from forward_influence.measurement import generations

    cfg = strategy.cfg
    created = out is not None and not out.exists()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        bar = tqdm(desc="generating", disable=not cfg.progress)
        docs, info = generations.generate_all(cfg, lm, out, progress=bar.update)
        bar.close()
        limit = strategy.document_limit()
        usable, skipped = [], []
        for td in docs:
            if limit is not None and len(td) > limit:
                td = dataclasses.replace(
                    td,
                    input_ids=td.input_ids[:limit],
                    offsets=td.offsets[:limit],
                    tokens=td.tokens[:limit],
                    n_prompt=min(td.n_prompt, limit),
                )
            why = strategy.problem(td)
            if why is None:
                usable.append(td)
                continue
            skipped.append(
                {"doc_id": td.doc.doc_id, "reason": why, "n_prompt": td.n_prompt, "n_generated": len(td) - td.n_prompt}
            )
        if not usable:
            need = max(strategy.generated_needed(td.n_prompt) for td in docs)
            longest = max(len(td) - td.n_prompt for td in docs)
            if longest >= need:  # long enough, but no source where --positions asks
                raise InputError(f"none of the {len(docs)} generations can be measured: {skipped[0]['reason']}")
            raise InputError(
                f"none of the {len(docs)} generations is long enough for {cfg.mode} mode (it needs {need} new tokens, "
                f"the longest has {longest}); raise --min-new-tokens to {need} (and --max-new-tokens with it)"
            )
        for sk in skipped:  # only when the run goes on; otherwise the error line says it all
            log.warning("skipped %s", sk["reason"])
    except InputError:
        if created and out.exists():
            shutil.rmtree(out)
        raise
    info.update(seconds=round(time.perf_counter() - t0, 3), cpu_seconds=round(time.process_time() - c0, 3))
    return usable, {"generation": info, "skipped": skipped}


def _run_units(
    strategy: Strategy, pool: Pool, tdocs: list[TokenizedDocument], store: PartStore | None
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Run every unfinished document's units on ``pool``; assemble and
    checkpoint each document as its last unit arrives.

    Returns the per-document ``(tables, meta)`` (None where a unit failed)
    and the failed units (name, document, error, attempts).
    """
    done: list[Any] = [None] * len(tdocs)
    pending: dict[int, dict[int, UnitResult]] = {}
    units = []
    for k, td in enumerate(tdocs):
        if store is not None and store.done(k, td.doc.doc_id):
            tables, m = store.read(k)
            done[k] = (tables, {**m, "resumed": True})
        else:
            pending[k] = {}
            units += strategy.plan(k, td)
    cfg = strategy.cfg
    failed: list[dict[str, Any]] = []
    bar = tqdm(total=len(units), desc="units", disable=not cfg.progress)
    for oc in pool.map(MeasureJob(cfg, progress=cfg.progress and pool.local), units):
        bar.update(1)
        k = oc.unit.doc_index
        if oc.error is not None:
            failed.append(
                {"unit": oc.unit.name, "doc_id": tdocs[k].doc.doc_id, "error": oc.error, "attempts": oc.attempts}
            )
            pending.pop(k, None)  # the document cannot be assembled; drop what arrived
            continue
        if k not in pending:
            continue
        pending[k][oc.unit.part] = oc.result
        if len(pending[k]) == oc.unit.n_parts:
            tables, m = assemble_document(cfg, tdocs[k], list(pending.pop(k).values()))
            if store is not None:
                store.write(k, tables, m)
            done[k] = (tables, m)
    bar.close()
    return done, failed


def load_result(out: str | Path) -> MeasureResult:
    """Read a finished ``fi-measure`` output directory."""
    return MeasureResult.load(out)
