"""Starting and resuming a run directory: one implementation for ``fi-measure``
(:func:`forward_influence.measurement.run.measure`) and ``fi-bench``
(:func:`forward_influence.bench.runner.run_bench`).

A run with ``--out`` is checked before anything is computed
(:func:`resume_state`: a rerun of a finished run returns it; one of another
config is refused), then started (:func:`start_run`: ``run.json`` with status
``running``, and the per-unit checkpoints of :class:`PartStore`).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from forward_influence.store.results import (
    SCHEMA_VERSION,
    PartStore,
    check_out_dir,
    git_sha,
    library_versions,
    read_run_json,
    write_json_atomic,
)


def resume_state(out: str | Path | None, config: Any, producer: str = "fi-measure") -> tuple[Path | None, bool]:
    """``(run directory, finished)`` for ``--out``: the directory checked by
    :func:`~forward_influence.store.results.check_out_dir` (None without
    ``--out``) and whether it already holds the finished run of ``config``."""
    if not out:
        return None, False
    path = check_out_dir(out, config, producer)
    finished = (path / "run.json").is_file() and read_run_json(path, producer).get("status") == "complete"
    return path, finished


class Described(Protocol):
    """What ``run.json`` records of an execution pool (:class:`forward_influence.execution.pool.Pool`)."""

    @property
    def provenance(self) -> dict[str, Any]: ...

    @property
    def runtime(self) -> dict[str, Any]: ...

    def execution(self) -> dict[str, Any]: ...


def run_meta(config: Any, pool: Described, **extra: Any) -> dict[str, Any]:
    """``run.json`` of a starting run: identity, config, model provenance,
    versions and runtime of ``pool`` (an execution pool), ``extra``, start time."""
    return {
        "run_id": uuid.uuid4().hex[:12],
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "config": config.to_dict(),
        "model": pool.provenance,
        "versions": library_versions(),
        "runtime": pool.runtime,
        "execution": pool.execution(),
        "git_sha": git_sha(),
        "seed": config.seed,
        **extra,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def start_run(out: Path | None, meta: dict[str, Any]) -> PartStore | None:
    """Create ``out``, write ``meta`` as its ``run.json`` and return its
    checkpoints (those of an interrupted run are kept); None without ``out``."""
    if out is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run.json", meta)
    return PartStore(out)
