"""Run a Forward Influence measurement over documents: the library behind ``fi-measure``.

The driver: it reads the documents, tokenises them with the model's
tokenizer, cuts each into work units (:mod:`forward_influence.units`), has a
pool run them (:mod:`forward_influence.execution`: this process, or Ray
workers with ``--ray``), assembles each document from its units and
checkpoints it, and writes the tables and ``run.json``. Units that keep
failing (Ray only) leave the run ``partial``, named in ``run.json``; a rerun
of the same command resumes from the checkpoints and retries them.

>>> from forward_influence import MeasureConfig, measure       # doctest: +SKIP
>>> res = measure(MeasureConfig(n_prefix=(128,), n_future=64, max_docs=1))  # doctest: +SKIP
>>> res.summary.sort_values("fi_total").tail()                # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import signals as sig
from .config import MeasureConfig
from .documents import TokenizedDocument, load_documents, tokenize
from .errors import InputError
from .execution import ModelSource, open_pool
from .models import LoadedModel
from .results import MeasureResult, PartStore, check_out_dir, git_sha, library_versions, write_json_atomic
from .units import INFLUENCE_COLUMNS, MeasureJob, UnitResult, assemble_document, plan_units, sliding_limit, tokens_table  # noqa: F401

log = logging.getLogger("forward_influence")


def _check_document(cfg: MeasureConfig, tdoc: TokenizedDocument) -> None:
    t = len(tdoc)
    need = cfg.tokens_needed()
    if t < need:
        what = "--n-prefix + --n-future" if cfg.mode == "split" else "--delay + --horizon + 1"
        raise InputError(
            f"document {tdoc.doc.doc_id!r} has {t} tokens, fewer than {what} = {need}; lower them or drop it with --doc-ids"
        )
    if cfg.positions is not None:
        limit = max(cfg.n_prefix) if cfg.mode == "split" else sliding_limit(cfg, t)
        bad = [p for p in cfg.positions if p >= limit]
        if len(bad) == len(cfg.positions):
            raise InputError(
                f"--positions {list(cfg.positions)[:5]} are all out of range for document {tdoc.doc.doc_id!r}: "
                f"sources must be < {limit}"
            )


def _document_tokens_limit(cfg: MeasureConfig) -> int | None:
    limits = [cfg.tokens_needed()] if cfg.mode == "split" else []
    if cfg.max_tokens is not None:
        limits.append(cfg.max_tokens)
    return min(limits) if limits else None


def _check_model(cfg: MeasureConfig, prov: dict[str, Any]) -> None:
    n_layers, n_kv = prov["n_layers"], prov["n_kv_heads"]
    if cfg.rep_layer >= n_layers:
        raise InputError(f"--rep-layer {cfg.rep_layer} out of range; the model has {n_layers} layers")
    if cfg.layer is not None and not 0 <= cfg.layer < n_layers:
        raise InputError(f"--layer {cfg.layer} out of range; the model has {n_layers} layers")
    if cfg.kv_head is not None and not 0 <= cfg.kv_head < n_kv:
        raise InputError(f"--kv-head {cfg.kv_head} out of range; the model has {n_kv} KV heads")


def _run_meta(cfg: MeasureConfig, pool: Any, docs: list[TokenizedDocument]) -> dict[str, Any]:
    return {
        "run_id": uuid.uuid4().hex[:12],
        "status": "running",
        "config": cfg.to_dict(),
        "model": pool.provenance,
        "versions": library_versions(),
        "runtime": pool.runtime,
        "execution": pool.execution(),
        "git_sha": git_sha(),
        "seed": cfg.seed,
        "documents": [{"doc_id": d.doc.doc_id, "n_tokens": len(d)} for d in docs],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def measure(config: MeasureConfig, model: LoadedModel | None = None, *, source: Any = None, cluster: Any = None) -> MeasureResult:
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
    cluster : forward_influence.distributed.ClusterSpec, optional
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
    torch.manual_seed(cfg.seed)
    docs = load_documents(cfg.doc, max_docs=cfg.max_docs, doc_ids=cfg.doc_ids)
    out = check_out_dir(cfg.out, cfg) if cfg.out else None
    if out is not None and (out / "run.json").is_file():
        done = MeasureResult.load_if_complete(out)
        if done is not None:
            return done
    source = source or ModelSource(cfg.model, device=cfg.device, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation)
    with open_pool(cfg.ray, model, source, cfg.device, cluster) as pool:
        _check_model(cfg, pool.provenance)
        limit = _document_tokens_limit(cfg)
        tdocs = [tokenize(pool.tokenizer, d, max_tokens=limit) for d in docs]
        for td in tdocs:
            _check_document(cfg, td)
        sig.SignalConfig.from_measure(cfg).check_ready()
        meta = _run_meta(cfg, pool, tdocs)
        store = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            store = PartStore(out)
            write_json_atomic(out / "run.json", meta)
        t0 = time.perf_counter()
        done_docs, failed = _run_units(cfg, pool, tdocs, store)
        meta["execution"] = pool.execution()
    parts = [d for d in done_docs if d is not None]
    doc_meta = [m for _, m in parts]
    names = list(parts[0][0]) if parts else ["tokens", "influence", "summary", "source_signals"]
    cat = {name: pd.concat([p[name] for p, _ in parts], ignore_index=True) if parts else pd.DataFrame() for name in names}
    floors = [m["noise_floor_max"] for m in doc_meta if m["noise_floor_max"] is not None]
    meta.update(
        status="partial" if failed else "complete",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        seconds_total=round(time.perf_counter() - t0, 3),
        method=cfg.method,
        noise_floor_max=max(floors) if floors else None,
        noise_floor_mean=float(np.mean([m["noise_floor_mean"] for m in doc_meta])) if floors else None,
        **_precision_summary(doc_meta),
        per_document=doc_meta,
        failed_units=failed,
    )
    result = MeasureResult(meta=meta, **cat)
    if out is not None and failed:
        write_json_atomic(out / "run.json", meta)  # the finished documents stay in .parts for the rerun
    elif out is not None:
        result.save(out)
        store.clear()
    return result


def _run_units(cfg: MeasureConfig, pool: Any, tdocs: list[TokenizedDocument], store: PartStore | None) -> tuple[list[Any], list[dict[str, Any]]]:
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
            units += plan_units(cfg, k, td)
    failed: list[dict[str, Any]] = []
    bar = tqdm(total=len(units), desc="units", disable=not cfg.progress)
    for oc in pool.map(MeasureJob(cfg, progress=cfg.progress and pool.local), units):
        bar.update(1)
        k = oc.unit.doc_index
        if oc.error is not None:
            failed.append({"unit": oc.unit.name, "doc_id": tdocs[k].doc.doc_id, "error": oc.error, "attempts": oc.attempts})
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


def _precision_summary(doc_meta: list[dict[str, Any]]) -> dict[str, Any]:
    """Run-level precision floor: median over documents' medians, max of maxima,
    share of KLs below their position's floor (mean over documents)."""
    ms = [m for m in doc_meta if m.get("precision_floor_median") is not None]
    if not ms:
        return {"precision_floor_median": None, "precision_floor_max": None, "share_below_precision_floor": None}
    return {
        "precision_floor_median": float(np.median([m["precision_floor_median"] for m in ms])),
        "precision_floor_max": max(m["precision_floor_max"] for m in ms),
        "share_below_precision_floor": float(np.mean([m["share_below_precision_floor"] for m in ms])),
    }


def load_result(out: str | Path) -> MeasureResult:
    """Read a finished ``fi-measure`` output directory."""
    return MeasureResult.load(out)
