"""What every execution pool shares: the job and pool protocols, a unit's outcome,
how a worker loads its model and reports itself, and the agreement check.

A run is cut into *units* (``fi-measure``: a document's split or a block of
its sliding sources; ``fi-bench``: a sample). A *job* is a small picklable
object with two methods::

    job.setup(lm)      # once per worker process, after its model is loaded
    job.run(unit)      # the per-unit function: returns the unit's result

A *pool* (:class:`Pool`) runs a job's units and yields an :class:`Outcome` per
unit as it finishes; the driver alone assembles results and writes the run
directory. :class:`forward_influence.execution.local.LocalPool` runs them one
after another in this process (the default);
:class:`forward_influence.execution.cluster.RayPool` (``--ray``) hands them to
one Ray actor per GPU. Both give the driver the model's tokenizer and
provenance, so the driver never needs the weights. They depend on this module
and not on each other; :func:`forward_influence.execution.choose.open_pool`
picks one.

Every unit must have a ``name`` (what the log and ``run.json`` call it when
it fails).

>>> reports = [{"model": {"revision": "a", "device": "cuda:0"}, "versions": {"torch": "2.13"}, "git_sha": None}] * 2
>>> check_agreement(reports)
>>> try:
...     check_agreement([reports[0], {**reports[0], "versions": {"torch": "2.12"}}])
... except InputError as e:
...     print(*str(e).split("; "), sep="\\n")
Ray workers disagree on versions.torch: '2.13' on worker 0 (host ?), '2.12' on worker 1 (host ?)
install the same package versions and model on every node
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from forward_influence.errors import InputError
from forward_influence.hf.models import LoadedModel, load_model


class Job(Protocol):
    """What a pool runs (see the module docstring)."""

    def setup(self, lm: LoadedModel) -> None: ...

    def run(self, unit: Any) -> Any: ...


@dataclass(frozen=True)
class ModelSource:
    """How a worker gets its model: a picklable ``() -> LoadedModel``.

    Tests inject any other picklable callable (a tiny model built in code).
    """

    name: str
    device: str = "auto"
    dtype: str = "auto"
    attn_implementation: str = "sdpa"

    def __call__(self) -> LoadedModel:
        return load_model(self.name, device=self.device, dtype=self.dtype, attn_implementation=self.attn_implementation)


@dataclass
class Outcome:
    """One unit's end: its ``result``, or ``error`` (one line) after ``attempts`` tries."""

    unit: Any
    result: Any = None
    error: str | None = None
    attempts: int = 1


def worker_report(lm: LoadedModel) -> dict[str, Any]:
    """What a worker says about itself: model provenance, versions, code, runtime."""
    from forward_influence.runtime.host import runtime_info
    from forward_influence.store.results import git_sha, library_versions

    return {
        "model": lm.provenance(),
        "versions": library_versions(),
        "git_sha": git_sha(),
        "runtime": runtime_info(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def _identity(report: dict[str, Any]) -> dict[str, Any]:
    """The fields every worker must share (a GPU's index does not count)."""
    model = dict(report.get("model") or {})
    if "device" in model:
        model["device"] = str(model["device"]).split(":")[0]
    flat = {f"model.{k}": v for k, v in model.items()}
    flat.update({f"versions.{k}": v for k, v in (report.get("versions") or {}).items()})
    flat["git_sha"] = report.get("git_sha")
    return flat


def check_agreement(reports: list[dict[str, Any]]) -> None:
    """Refuse workers that disagree on model, revision, dtype or package versions.

    Raises
    ------
    InputError
        One line naming the first field that differs and the two workers.
    """
    if not reports:
        return
    ref = _identity(reports[0])
    for i, rep in enumerate(reports[1:], start=1):
        other = _identity(rep)
        for key in sorted(set(ref) | set(other)):
            if ref.get(key) != other.get(key):
                raise InputError(
                    f"Ray workers disagree on {key}: {ref.get(key)!r} on worker 0 "
                    f"(host {reports[0].get('host', '?')}), "
                    f"{other.get(key)!r} on worker {i} (host {rep.get('host', '?')}); "
                    "install the same package versions and model on every node"
                )


@runtime_checkable
class Pool(Protocol):
    """Where a run's units run (a context manager: entered before use, closed after).

    Attributes
    ----------
    local : bool
        Units run in this process (progress bars may be shown).
    lm : LoadedModel or None
        The model, where the driver holds it (local runs); None on a cluster.
    tokenizer, provenance, runtime
        The model's tokenizer and provenance, the workers' runtime settings.
    """

    local: bool
    lm: LoadedModel | None

    @property
    def tokenizer(self) -> Any: ...

    @property
    def provenance(self) -> dict[str, Any]: ...

    @property
    def runtime(self) -> dict[str, Any]: ...

    def execution(self) -> dict[str, Any]:
        """Where the run ran, for ``run.json``."""
        ...

    def map(self, job: Job, units: Iterable[Any]) -> Iterator[Outcome]:
        """Run ``job`` on ``units``; yield an :class:`Outcome` per unit as it ends."""
        ...

    def __enter__(self) -> Pool: ...

    def __exit__(self, *exc: Any) -> None: ...
