"""Run a Forward Influence measurement over documents, or over the model's own
continuations of prompts (``--generate``, :mod:`forward_influence.generations`):
the library behind ``fi-measure``.

>>> from forward_influence import MeasureConfig, measure       # doctest: +SKIP
>>> res = measure(MeasureConfig(n_prefix=(128,), n_future=64, max_docs=1))  # doctest: +SKIP
>>> res.summary.sort_values("fi_total").tail()                # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import signals as sig
from .config import MeasureConfig
from .documents import TokenizedDocument, load_documents, tokenize
from .engine import Ablation, ForwardInfluenceEngine
from .errors import InputError
from .fisher import FisherEstimator
from .models import LoadedModel, load_model
from .results import SCHEMA_VERSION, MeasureResult, PartStore, check_out_dir, git_sha, library_versions, write_json_atomic
from .runtime import runtime_info
from .tables import summarize

log = logging.getLogger(__name__)

INFLUENCE_COLUMNS = ["doc_id", "mode", "split_pos", "source_pos", "layer", "kv_head", "target_pos", "distance", "distance_tau", "kl"]


def _sources(cfg: MeasureConfig, limit: int) -> list[int]:
    if cfg.positions is not None:
        return [p for p in cfg.positions if p < limit]
    return list(range(0, limit, cfg.stride))


def _sliding_sources(cfg: MeasureConfig, tdoc: TokenizedDocument) -> list[int]:
    """Sliding-mode sources of a document; of a generation, only generated
    tokens (``s >= n_prompt``), the stride counted from the first of them."""
    start, limit = tdoc.n_prompt or 0, _sliding_limit(cfg, len(tdoc))
    if cfg.positions is not None:
        return [p for p in cfg.positions if start <= p < limit]
    return list(range(start, limit, cfg.stride))


def _generated_needed(cfg: MeasureConfig, n_prompt: int) -> int:
    """Generated tokens a generation needs after an ``n_prompt``-token prompt:
    one sliding source at ``s = n_prompt`` needs ``D + H``; split mode ``N + F`` in all."""
    if cfg.mode == "sliding":
        return cfg.delay + cfg.horizon
    return max(0, cfg.tokens_needed() - n_prompt)


def _problem(cfg: MeasureConfig, tdoc: TokenizedDocument) -> str | None:
    """Why ``tdoc`` cannot be measured in this mode (one line naming the fix), or None."""
    t, p, name = len(tdoc), tdoc.n_prompt, tdoc.doc.doc_id
    if p is None and t < cfg.tokens_needed():
        what = "--n-prefix + --n-future" if cfg.mode == "split" else "--delay + --horizon + 1"
        return f"document {name!r} has {t} tokens, fewer than {what} = {cfg.tokens_needed()}; lower them or drop it with --doc-ids"
    if p is not None and t - p < _generated_needed(cfg, p):
        what = "--delay + --horizon" if cfg.mode == "sliding" else "--n-prefix + --n-future minus the prompt"
        return (f"generation {name!r} has {t - p} new tokens after its {p}-token prompt, fewer than {what} = "
                f"{_generated_needed(cfg, p)}; raise --min-new-tokens to {_generated_needed(cfg, p)}")
    if cfg.positions is not None:
        if cfg.mode == "split":
            ok, where = _sources(cfg, max(cfg.n_prefix)), f"< {max(cfg.n_prefix)}"
        else:
            ok, where = _sliding_sources(cfg, tdoc), f"in [{p or 0}, {_sliding_limit(cfg, t)})"
        if not ok:
            return f"--positions {list(cfg.positions)[:5]} are all out of range for document {name!r}: sources must be {where}"
    return None


def _check_document(cfg: MeasureConfig, tdoc: TokenizedDocument) -> None:
    why = _problem(cfg, tdoc)
    if why is not None:
        raise InputError(why)


def _sliding_limit(cfg: MeasureConfig, n_tokens: int) -> int:
    """Sliding-mode sources must be below this: ``s + D + H <= T``."""
    return n_tokens - cfg.delay - cfg.horizon + 1


def _document_tokens_limit(cfg: MeasureConfig) -> int | None:
    limits = [cfg.tokens_needed()] if cfg.mode == "split" else []
    if cfg.max_tokens is not None:
        limits.append(cfg.max_tokens)
    return min(limits) if limits else None


def tokens_table(tdoc: TokenizedDocument) -> pd.DataFrame:
    """One row per token: doc_id, pos, token_id, token, char_start, char_end
    (and, for a generation, ``segment``: prompt / generated)."""
    t = len(tdoc)
    df = pd.DataFrame(
        {
            "doc_id": pd.Series([tdoc.doc.doc_id] * t, dtype="string"),
            "pos": np.arange(t, dtype=np.int64),
            "token_id": tdoc.input_ids.numpy().astype(np.int64),
            "token": pd.Series(tdoc.tokens, dtype="string"),
            "char_start": tdoc.offsets[:, 0],
            "char_end": tdoc.offsets[:, 1],
        }
    )
    if tdoc.n_prompt is not None:
        df["segment"] = pd.Series(np.where(np.arange(t) < tdoc.n_prompt, "prompt", "generated"), dtype="string")
    return df


def _influence_frame(doc_id: str, mode: str, split_pos: int | None, sources: Sequence[int], targets: np.ndarray, kl: np.ndarray, layer: int | None, kv_head: int | None, taus: np.ndarray) -> pd.DataFrame:
    """Long table from ``kl`` ``(S, n)`` with ``targets`` ``(S, n)`` absolute
    query positions and ``taus`` ``(S,)`` each source's eviction time."""
    s, n = kl.shape
    src = np.repeat(np.asarray(sources, dtype=np.int64), n)
    tgt = targets.reshape(-1).astype(np.int64)
    tau = np.repeat(np.asarray(taus, dtype=np.int64), n)
    na = pd.array([pd.NA] * (s * n), dtype="Int64")
    return pd.DataFrame(
        {
            "doc_id": pd.Series([doc_id] * (s * n), dtype="string"),
            "mode": pd.Series([mode] * (s * n), dtype="string"),
            "split_pos": pd.array([split_pos] * (s * n), dtype="Int64") if split_pos is not None else na,
            "source_pos": src,
            "layer": pd.array([layer] * (s * n), dtype="Int64") if layer is not None else na,
            "kv_head": pd.array([kv_head] * (s * n), dtype="Int64") if kv_head is not None else na,
            "target_pos": tgt,
            "distance": tgt - src,
            "distance_tau": tgt - tau,
            "kl": kl.reshape(-1),
        }
    )


def measure_document(
    engine: ForwardInfluenceEngine,
    tdoc: TokenizedDocument,
    cfg: MeasureConfig,
    progress: bool = False,
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Measure one tokenised document; returns its tables and meta (floor, timings)."""
    doc_id = tdoc.doc.doc_id
    ids = tdoc.input_ids
    t0 = time.perf_counter()
    collector = sig.SignalCollector(engine.model, len(tdoc), sig.SignalConfig.from_measure(cfg))
    prefill = engine.prefill(ids, on_attention=collector.on_attention, layer_hooks=collector.on_layer)
    tokens = tokens_table(tdoc)
    tokens, source_signals, token_layers = collector.finish(prefill, tokens, tdoc)
    t_prefill = time.perf_counter() - t0
    layers = (cfg.layer,) if cfg.layer is not None else None
    heads = (cfg.kv_head,) if cfg.kv_head is not None else None
    frames, floors, shared, below, precision = [], [], [], [], []
    t1 = time.perf_counter()
    if cfg.method == "fisher":
        est = FisherEstimator(engine.model, samples=cfg.samples, targets=cfg.fisher_targets, blocks=cfg.fisher_blocks, seed=cfg.seed)
        for n in cfg.n_prefix:
            sources = _sources(cfg, n)
            r = est.split(ids, n, cfg.n_future, sources, layers, heads, prefill=prefill)
            centres = np.array([n + (a + b - 1) // 2 for a, b in r.block_bounds])
            targets = np.broadcast_to(centres, r.kl.shape)
            fr = _influence_frame(doc_id, "split", n, sources, targets, r.kl, cfg.layer, cfg.kv_head, np.full(len(sources), n))
            frames.append(fr.assign(kl_se=r.stderr.reshape(-1)))
    elif cfg.mode == "split":
        for n in cfg.n_prefix:
            sources = _sources(cfg, n)
            bar = tqdm(total=len(sources), desc=f"{doc_id[:24]} N={n}", disable=not progress, leave=False)
            res = engine.split(ids, n, cfg.n_future, [Ablation((s,), layers, heads) for s in sources], prefill=prefill, progress=bar.update)
            bar.close()
            targets = np.broadcast_to(np.arange(n, n + cfg.n_future), res.kl.shape)
            frames.append(_influence_frame(doc_id, "split", n, sources, targets, res.kl, cfg.layer, cfg.kv_head, np.full(len(sources), n)))
            floors.append(res.noise_floor)
            shared.append(res.shared_reference)
            if res.precision_floor is not None:
                precision.append(res.precision_floor)
                below.append(res.kl < res.precision_floor[None, :])
    else:
        sources = _sliding_sources(cfg, tdoc)
        bar = tqdm(total=len(sources), desc=f"{doc_id[:24]} sliding", disable=not progress, leave=False)
        res = engine.sliding(ids, sources, cfg.horizon, layers, heads, prefill=prefill, progress=bar.update, delay=cfg.delay)
        bar.close()
        taus = np.asarray(sources, dtype=np.int64) + cfg.delay
        targets = taus[:, None] + np.arange(cfg.horizon)[None, :]
        frames.append(_influence_frame(doc_id, "sliding", None, sources, targets, res.kl, cfg.layer, cfg.kv_head, taus))
        floors.append(res.noise_floor)
        if res.precision_floor is not None:
            precision.append(res.precision_floor)
            below.append(res.kl < res.precision_floor[None, :])
    influence = pd.concat(frames, ignore_index=True)
    floor = np.concatenate(floors) if floors else None
    summary = summarize(influence, cfg.near, cfg.far).assign(method=cfg.method)
    tables = {"tokens": tokens, "influence": influence, "summary": summary, "source_signals": source_signals}
    if token_layers is not None:
        tables["token_layers"] = token_layers
    meta = {
        "doc_id": doc_id,
        "n_tokens": len(tdoc),
        "noise_floor_max": (float(floor.max()) if floor.size else 0.0) if floor is not None else None,
        "noise_floor_mean": (float(floor.mean()) if floor.size else 0.0) if floor is not None else None,
        "seconds_prefill_signals": round(t_prefill, 3),
        "seconds_ablation": round(time.perf_counter() - t1, 3),
        "shared_reference": bool(shared) and all(shared),  # split batches reused the first null row
        **_precision_meta(precision, below),
        "n_ablations": int(influence.groupby(["split_pos", "source_pos"], dropna=False).ngroups),
    }
    return tables, meta


_NO_PRECISION = {"precision_floor_median": None, "precision_floor_max": None, "share_below_precision_floor": None}


def _precision_meta(precision: list[np.ndarray], below: list[np.ndarray]) -> dict[str, Any]:
    """Per-document precision floor (the dithered null row's KL per scored
    position, :class:`forward_influence.engine.SplitResult`) and the share of
    measured KLs below it."""
    if not precision:
        return dict(_NO_PRECISION)
    pf = np.concatenate(precision)
    cells = sum(b.size for b in below)
    return {
        "precision_floor_median": float(np.median(pf)),
        "precision_floor_max": float(pf.max()),
        "share_below_precision_floor": float(sum(int(b.sum()) for b in below) / cells) if cells else 0.0,
    }


def _run_meta(cfg: MeasureConfig, lm: LoadedModel, docs: list[TokenizedDocument]) -> dict[str, Any]:
    return {
        "run_id": uuid.uuid4().hex[:12],
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "config": cfg.to_dict(),
        "model": lm.provenance(),
        "versions": library_versions(),
        "runtime": runtime_info(),
        "git_sha": git_sha(),
        "seed": cfg.seed,
        "documents": [{"doc_id": d.doc.doc_id, "n_tokens": len(d), **({} if d.n_prompt is None else {"n_prompt": d.n_prompt})} for d in docs],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def measure(config: MeasureConfig, model: LoadedModel | None = None) -> MeasureResult:
    """Measure Forward Influence (and per-token signals) for every document, or
    for every generation of ``config.generate`` long enough for the mode (the
    others are skipped with a warning and listed in ``meta["skipped"]``).

    Parameters
    ----------
    config : MeasureConfig
        With ``config.out`` set, results are checkpointed per document into
        that directory and a rerun resumes; otherwise everything stays in memory.
    model : LoadedModel, optional
        A model already loaded (e.g. in a notebook); else loaded from ``config``.

    Returns
    -------
    MeasureResult
        ``.tokens``, ``.influence``, ``.summary`` (and ``.token_layers``).

    Raises
    ------
    InputError
        Bad documents, flags, model, device or output directory — before any
        output is written.
    """
    cfg = config.validate()
    torch.manual_seed(cfg.seed)
    if cfg.generate is None:
        docs = load_documents(cfg.doc, max_docs=cfg.max_docs, doc_ids=cfg.doc_ids)
    else:
        from .generations import check_source

        check_source(cfg.generate)  # before the model loads (the prompts themselves need its tokenizer)
        docs = []
    lm = model or load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation)
    if cfg.rep_layer >= lm.model.config.num_hidden_layers:
        raise InputError(f"--rep-layer {cfg.rep_layer} out of range; the model has {lm.model.config.num_hidden_layers} layers")
    if cfg.layer is not None and not 0 <= cfg.layer < lm.model.config.num_hidden_layers:
        raise InputError(f"--layer {cfg.layer} out of range; the model has {lm.model.config.num_hidden_layers} layers")
    n_kv = getattr(lm.model.config, "num_key_value_heads", None) or lm.model.config.num_attention_heads
    if cfg.kv_head is not None and not 0 <= cfg.kv_head < n_kv:
        raise InputError(f"--kv-head {cfg.kv_head} out of range; the model has {n_kv} KV heads")
    limit = _document_tokens_limit(cfg)
    tdocs = [tokenize(lm.tokenizer, d, max_tokens=limit) for d in docs]
    for td in tdocs:
        _check_document(cfg, td)
    sig.SignalConfig.from_measure(cfg).check_ready()
    out = check_out_dir(cfg.out, cfg) if cfg.out else None
    if out is not None and (out / "run.json").is_file():
        done = MeasureResult.load_if_complete(out)
        if done is not None:
            return done
    extra: dict[str, Any] = {}
    if cfg.generate is not None:
        tdocs, extra = _generated_documents(cfg, lm, out)
    meta = {**_run_meta(cfg, lm, tdocs), **extra}
    store = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        store = PartStore(out)
        write_json_atomic(out / "run.json", meta)
    engine = ForwardInfluenceEngine(lm.model, batch_size=cfg.batch_size)
    t0, c0 = time.perf_counter(), time.process_time()
    parts, doc_meta = [], []
    bar = tqdm(tdocs, desc="documents", disable=not cfg.progress)
    for k, td in enumerate(bar):
        if store is not None and store.done(k, td.doc.doc_id):
            tables, m = store.read(k)
            m = {**m, "resumed": True}
        else:
            tables, m = measure_document(engine, td, cfg, progress=cfg.progress)
            if store is not None:
                store.write(k, tables, m)
        parts.append(tables)
        doc_meta.append(m)
    cat = {name: pd.concat([p[name] for p in parts], ignore_index=True) for name in parts[0]}
    meta.update(
        status="complete",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        seconds_total=round(time.perf_counter() - t0, 3),
        cpu_seconds_total=round(time.process_time() - c0, 3),  # all threads: the cost on a shared machine
        method=cfg.method,
        noise_floor_max=None if cfg.method == "fisher" else max(m["noise_floor_max"] for m in doc_meta),
        noise_floor_mean=None if cfg.method == "fisher" else float(np.mean([m["noise_floor_mean"] for m in doc_meta])),
        **_precision_summary(doc_meta),
        per_document=doc_meta,
    )
    result = MeasureResult(meta=meta, **cat)
    if out is not None:
        result.save(out)
        store.clear()
    return result


def _generated_documents(cfg: MeasureConfig, lm: LoadedModel, out: Path | None) -> tuple[list[TokenizedDocument], dict[str, Any]]:
    """The generations of ``cfg.generate`` that this mode can measure (cut to
    the tokens it reads), and ``run.json``'s ``generation`` and ``skipped``.
    A generation too short is skipped with a warning; none usable raises
    :class:`InputError` and removes an ``out`` this call created."""
    from . import generations

    created = out is not None and not out.exists()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        bar = tqdm(desc="generating", disable=not cfg.progress)
        docs, info = generations.generate_all(cfg, lm, out, progress=bar.update)
        bar.close()
        limit = _document_tokens_limit(cfg)
        usable, skipped = [], []
        for td in docs:
            if limit is not None and len(td) > limit:
                td = dataclasses.replace(td, input_ids=td.input_ids[:limit], offsets=td.offsets[:limit], tokens=td.tokens[:limit],
                                         n_prompt=min(td.n_prompt, limit))
            why = _problem(cfg, td)
            if why is None:
                usable.append(td)
                continue
            skipped.append({"doc_id": td.doc.doc_id, "reason": why, "n_prompt": td.n_prompt, "n_generated": len(td) - td.n_prompt})
        if not usable:
            need = max(_generated_needed(cfg, td.n_prompt) for td in docs)
            longest = max(len(td) - td.n_prompt for td in docs)
            if longest >= need:  # long enough, but no source where --positions asks
                raise InputError(f"none of the {len(docs)} generations can be measured: {skipped[0]['reason']}")
            raise InputError(f"none of the {len(docs)} generations is long enough for {cfg.mode} mode (it needs {need} new tokens, "
                             f"the longest has {longest}); raise --min-new-tokens to {need} (and --max-new-tokens with it)")
        for sk in skipped:  # only when the run goes on; otherwise the error line says it all
            log.warning("skipped %s", sk["reason"])
    except InputError:
        if created and out.exists():
            shutil.rmtree(out)
        raise
    info.update(seconds=round(time.perf_counter() - t0, 3), cpu_seconds=round(time.process_time() - c0, 3))
    return usable, {"generation": info, "skipped": skipped}


def _precision_summary(doc_meta: list[dict[str, Any]]) -> dict[str, Any]:
    """Run-level precision floor: median over documents' medians, max of maxima,
    share of KLs below their position's floor (mean over documents)."""
    ms = [m for m in doc_meta if m.get("precision_floor_median") is not None]
    if not ms:
        return dict(_NO_PRECISION)
    return {
        "precision_floor_median": float(np.median([m["precision_floor_median"] for m in ms])),
        "precision_floor_max": max(m["precision_floor_max"] for m in ms),
        "share_below_precision_floor": float(np.mean([m["share_below_precision_floor"] for m in ms])),
    }


def load_result(out: str | Path) -> MeasureResult:
    """Read a finished ``fi-measure`` output directory."""
    return MeasureResult.load(out)
