"""Result tables, their provenance, and crash-safe output directories.

An output directory holds::

    run.json            config, model provenance, versions, seed, git sha,
                        noise floor, timings, where it ran (``execution``),
                        status: running, complete, or partial (units that
                        kept failing on Ray workers, in ``failed_units``)
    tokens.parquet      one row per document token
    source_signals.parquet  per split (or sliding source): signals read before eviction
    influence.parquet   long: doc_id, mode, split_pos, source_pos, layer,
                        kv_head, target_pos, distance, kl
    summary.parquet     per document and source: FI total and per bucket
    .parts/NNNN/        per-document checkpoints (same tables + meta.json)

Every file is written to a temporary name and renamed, so a killed run never
leaves a half-written table; rerunning the same command skips finished
documents. A different configuration is refused. Directories are created
with the user's umask (no 0700 temporary directories renamed into place).

``run.json`` carries ``schema_version`` (:data:`SCHEMA_VERSION`; ``fi-bench``
writes the same field), checked whenever a run directory is read
(:func:`read_run_json`). A version not in :data:`READABLE_VERSIONS` is
refused with the version found, the version expected and the fix (re-run
with this version); a finished run of an older readable version is read with
its derived tables recomputed (:meth:`MeasureResult.load`), while its
unfinished checkpoints are never resumed into a run of this version. A
``run.json`` without the field predates versioning (version 1 or older): it
is read as the current version only if its tables have the expected columns (:data:`REQUIRED_COLUMNS`), else refused
the same way. A table that is missing, truncated or not Parquet is one
line naming the file.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from forward_influence.config import MeasureConfig
from forward_influence.errors import InputError
from forward_influence.store.schema import DISTANCE_FROM, OPTIONAL_TABLES, REQUIRED_COLUMNS, TABLES
from forward_influence.store.tables import summarize_influence

#: Layout version of an output directory (``run.json`` and its tables). Bump it
#: when a table's columns or meaning change; readers refuse other versions.
SCHEMA_VERSION = 3
#: 1: before the causality rule (attention signals in tokens.parquet, read over the whole document);
#: 2: source_signals.parquet (attention read before each source's eviction time), influence.distance_tau;
#: 3: summary.parquet's near/far buckets count from the eviction time in both modes (run.json
#:    ``distance_from: tau``; version 2 counted split-mode buckets from the source).
#: Finished runs of these versions are read (version 2's summary is recomputed from its influence table).
READABLE_VERSIONS = (2, 3)


def _rerun(producer: str) -> str:
    return f"re-run {producer} with this version into a new --out"


def _damaged(producer: str) -> str:
    return f"the run directory is damaged; re-run {producer} into a new --out"


def _own_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("forward_influence")
    except md.PackageNotFoundError:
        return "?"


def read_run_json(out: str | Path, producer: str = "fi-measure") -> dict[str, Any]:
    """``out/run.json``, checked: present, a JSON object, and of :data:`SCHEMA_VERSION`
    (or without a version, which the caller settles with :func:`check_columns`).

    Parameters
    ----------
    out : str or Path
        A run directory.
    producer : str
        The command that writes such directories (named in the fix).

    Raises
    ------
    InputError
        No ``run.json``, unreadable or malformed JSON, another schema version.
    """
    path = Path(out) / "run.json"
    if not path.is_file():
        raise InputError(f"{out} has no run.json; give the --out directory of an {producer} run")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(
            f"{path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"{_damaged(producer)}"
        ) from None
    if not isinstance(meta, dict):
        raise InputError(f"{path} is not a JSON object; {_damaged(producer)}")
    found = meta.get("schema_version")
    if found is not None and (type(found) is not int or found not in READABLE_VERSIONS):
        raise InputError(
            f"{path} has schema_version {found!r}, but forward_influence {_own_version()} reads "
            f"schema_version {SCHEMA_VERSION}; {_rerun(producer)}"
        )
    return meta


def check_columns(
    df: pd.DataFrame, path: Path, required: tuple[str, ...], meta: dict[str, Any], producer: str = "fi-measure"
) -> None:
    """Refuse a table without the ``required`` columns (and so an unversioned run of another layout)."""
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return
    if meta.get("schema_version") is None:
        raise InputError(
            f"{path.parent}/run.json has no schema_version and {path.name} lacks columns {missing}: "
            f"written by an older, incompatible version; {_rerun(producer)}"
        )
    raise InputError(f"{path} lacks columns {missing}; {_damaged(producer)}")


def read_parquet(path: str | Path, fix: str) -> pd.DataFrame:
    """A Parquet table, or one :class:`InputError` line naming the file and ``fix``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is missing; {fix}")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSError
        reason = re.sub(
            r"^Could not open Parquet input source '[^']*': ",
            "",
            str(e).splitlines()[0] if str(e) else type(e).__name__,
        )
        raise InputError(f"{path} is not a readable Parquet table ({reason}); {fix}") from None


def read_tables(
    out: str | Path,
    required: dict[str, tuple[str, ...]],
    meta: dict[str, Any],
    producer: str = "fi-measure",
    optional: tuple[str, ...] = (),
) -> dict[str, pd.DataFrame]:
    """The tables ``out/<name>.parquet`` of a run whose ``run.json`` is ``meta``:
    every name in ``required`` (checked for its columns), and those of
    ``optional`` that exist.

    Raises
    ------
    InputError
        A table missing, unreadable or without its columns.
    """
    out = Path(out)
    fix = _damaged(producer)
    tables = {}
    for name, columns in required.items():
        tables[name] = read_parquet(out / f"{name}.parquet", fix)
        check_columns(tables[name], out / f"{name}.parquet", columns, meta, producer)
    for name in optional:
        if (out / f"{name}.parquet").exists():
            tables[name] = read_parquet(out / f"{name}.parquet", fix)
    return tables


def fresh_dir(parent: Path, prefix: str) -> Path:
    """A new empty directory ``parent/<prefix><random>``, made with the user's
    umask (``tempfile.mkdtemp`` would make it 0700)."""
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = parent / f"{prefix}{uuid.uuid4().hex[:10]}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a fresh directory under {parent}")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("forward_influence", "torch", "transformers", "numpy", "pandas", "pyarrow", "spacy", "scipy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def git_sha() -> str | None:
    """Commit of the checkout this package runs from (``+dirty`` if modified), if any."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def check_out_dir(out: str | Path, config: Any, producer: str = "fi-measure") -> Path:
    """Refuse an unusable out dir before anything is computed or written: not
    a writable directory, or holding a run of another config or schema version."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory; choose another path")
    anc = out
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(f"--out {out}: {anc} is not a directory; choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".fi-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError:
        raise InputError(f"--out {out} is not writable (no write access to {anc}); choose another directory") from None
    if (out / "run.json").is_file():
        # Fields added after the run was written take their defaults.
        old = type(config).from_dict(read_run_json(out, producer).get("config", {})).to_dict()
        new = config.to_dict()
        diff = [k for k in new if k not in config.non_semantic and old.get(k) != new[k]]
        if diff:
            what = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in diff)
            raise InputError(f"--out {out} holds a run with a different config ({what}); use a new --out or delete it")
    return out


@dataclass
class MeasureResult:
    """The tables of a measurement and where they came from.

    Attributes
    ----------
    tokens, influence, summary : pandas.DataFrame
    source_signals : pandas.DataFrame
        Signals that depend on the eviction time, one row per (document,
        split, source) (:mod:`forward_influence.measurement.signals`).
    token_layers : pandas.DataFrame or None
        Per-layer / per-KV-head signals, when computed.
    meta : dict
        ``run.json``: config, provenance, versions, seed, noise floor, timings.
    """

    tokens: pd.DataFrame
    influence: pd.DataFrame
    summary: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    token_layers: pd.DataFrame | None = None
    source_signals: pd.DataFrame | None = None

    @property
    def config(self) -> MeasureConfig:
        return MeasureConfig.from_dict(self.meta["config"])

    def with_signals(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Join ``rows`` keyed ``doc_id, split_pos, pos`` with each token's
        signals and words (``tokens``) and the source's attention signals at
        its eviction time (``source_signals``, per split).

        >>> res.with_signals(res.summary.assign(pos=res.summary.source_pos))  # doctest: +SKIP
        """
        tok = self.tokens.drop(columns=[c for c in ("split_pos",) if c in self.tokens])
        df = rows.merge(tok, on=["doc_id", "pos"], how="left", validate="many_to_one")
        return df.merge(self.source_signals, on=["doc_id", "split_pos", "pos"], how="left", validate="many_to_one")

    def save(self, out: str | Path) -> Path:
        """Write all tables and ``run.json`` atomically into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name in TABLES + OPTIONAL_TABLES:
            df = getattr(self, name)
            if df is not None:
                write_parquet_atomic(df, out / f"{name}.parquet")
        write_json_atomic(
            out / "run.json", {**self.meta, "schema_version": SCHEMA_VERSION, "distance_from": DISTANCE_FROM}
        )
        return out

    @classmethod
    def load(cls, out: str | Path) -> MeasureResult:
        """Read a finished output directory."""
        out = Path(out)
        meta = read_run_json(out)
        if meta.get("status") != "complete":
            raise InputError(
                f"{out}: the run did not finish (status {meta.get('status')!r}); rerun the same command to resume it"
            )
        tables = read_tables(out, REQUIRED_COLUMNS, meta, optional=OPTIONAL_TABLES)
        if meta.get("distance_from") != DISTANCE_FROM:
            tables["summary"] = resummarize(tables["influence"], tables["summary"], meta)
        return cls(meta=meta, **tables)

    @classmethod
    def load_if_complete(cls, out: str | Path) -> MeasureResult | None:
        """The finished run in ``out``, or None if it has not finished (see :meth:`load`)."""
        meta = read_run_json(out)
        return cls.load(out) if meta.get("status") == "complete" else None


def resummarize(influence: pd.DataFrame, summary: pd.DataFrame, meta: dict[str, Any]) -> pd.DataFrame:
    """``summary.parquet`` of a run written before :data:`SCHEMA_VERSION` 3,
    recomputed from its influence table with distances from the eviction time
    (its stored buckets counted split-mode distances from the source)."""
    config = meta.get("config") or {}
    out = summarize_influence(influence, int(config.get("near", 32)), int(config.get("far", 128)))
    return out.assign(method=summary["method"].iloc[0]) if "method" in summary and len(summary) else out


class PartStore:
    """Per-document checkpoints under ``out/.parts``: each a directory renamed
    into place, its ``meta.json`` stamped with :data:`SCHEMA_VERSION` (a
    checkpoint of another version is measured again, never resumed)."""

    def __init__(self, out: Path):
        self.root = out / ".parts"

    def path(self, index: int) -> Path:
        return self.root / f"{index:05d}"

    def done(self, index: int, doc_id: str) -> bool:
        meta = self.path(index) / "meta.json"
        if not meta.is_file():
            return False
        m = json.loads(meta.read_text())
        return m.get("doc_id") == doc_id and m.get("schema_version") == SCHEMA_VERSION

    def write(self, index: int, tables: dict[str, pd.DataFrame], meta: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = fresh_dir(self.root, ".tmp-")
        for name, df in tables.items():
            df.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "meta.json").write_text(json.dumps({**meta, "schema_version": SCHEMA_VERSION}, indent=2, default=str))
        final = self.path(index)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

    def read(self, index: int) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
        p = self.path(index)
        fix = f"delete {p} and rerun the same command"
        tables = {f.stem: read_parquet(f, fix) for f in sorted(p.glob("*.parquet"))}
        meta = json.loads((p / "meta.json").read_text())
        meta.pop("schema_version", None)
        return tables, meta

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def precision_floor_text(meta: dict[str, Any]) -> str:
    """``", precision floor median X (Y% of KLs below it)"`` for a run's summary
    line, or ``""`` when the run has none (Fisher runs, older runs)."""
    if meta.get("precision_floor_median") is None:
        return ""
    median, share = meta["precision_floor_median"], meta["share_below_precision_floor"]
    return f", precision floor median {median:.1e} ({share:.0%} of KLs below it)"


def precision_warning(meta: dict[str, Any], limit: float = 0.25) -> str | None:
    """One line when more than ``limit`` of a run's KLs sit below the precision
    floor (typical of bfloat16 weights), naming the fix; else None."""
    share = meta.get("share_below_precision_floor")
    if share is None or share <= limit:
        return None
    dtype = (meta.get("model") or {}).get("dtype", "this dtype")
    return (
        f"{share:.0%} of the KL values are below the precision floor (median {meta['precision_floor_median']:.1e} "
        f"with {dtype}): they are rounding noise; rerun with --dtype float32 for exact values"
    )
