"""Run a job's units one after another in this process: the single-process pool
(:mod:`forward_influence.execution.pool` says what a pool is)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from forward_influence.execution.pool import Job, Outcome, worker_report
from forward_influence.hf.models import LoadedModel


class LocalPool:
    """Run units one after another in this process (the single-process path).

    An exception in a unit propagates (the run stops; a rerun resumes from
    the checkpoints).
    """

    local = True

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.report = worker_report(lm)

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    @property
    def provenance(self) -> dict[str, Any]:
        return self.report["model"]

    @property
    def runtime(self) -> dict[str, Any]:
        from forward_influence.runtime.host import runtime_info

        return runtime_info()

    def execution(self) -> dict[str, Any]:
        """Where the run ran, for ``run.json``."""
        return {"backend": "local", "workers": 1, "threads": self.runtime["threads"]}

    def map(self, job: Job, units: Iterable[Any]) -> Iterator[Outcome]:
        job.setup(self.lm)
        for unit in units:
            yield Outcome(unit, job.run(unit))
