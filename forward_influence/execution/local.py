"""Where work units run: in this process, or on a Ray cluster.

A run is cut into *units* (``fi-measure``: a document's split or a block of
its sliding sources; ``fi-bench``: a sample). A *job* is a small picklable
object with two methods::

    job.setup(lm)      # once per worker process, after its model is loaded
    job.run(unit)      # the per-unit function: returns the unit's result

A *pool* runs a job's units and yields an :class:`Outcome` per unit as it
finishes; the driver alone assembles results and writes the run directory.
:class:`LocalPool` runs them one after another in this process (the default);
:class:`forward_influence.execution.cluster.RayPool` (``--ray``) hands them to one
Ray actor per GPU. Both give the driver the model's tokenizer and provenance,
so the driver never needs the weights.

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

import contextlib
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

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


def open_pool(ray: str | None, model: LoadedModel | None, source: Any, device: str, cluster: Any = None) -> Any:
    """The pool a run asked for: Ray with ``--ray`` (or a ``cluster`` spec), else local.

    Parameters
    ----------
    ray : str or None
        The ``--ray`` address (``auto``, ``local:N``, ``HOST:PORT``).
    model : LoadedModel, optional
        A model already loaded (local runs only).
    source : callable
        ``() -> LoadedModel``; what each worker (or the local run, without ``model``) loads.
    device : str
        The run's ``--device`` (``cpu`` keeps Ray workers off the GPUs).
    cluster : ClusterSpec or RayPool, optional
        Overrides ``ray`` with a full specification (tests: a stand-in GPU
        resource), or an open pool to reuse (left open).
    """
    if ray is None and cluster is None:
        return LocalPool(model if model is not None else source())
    if model is not None:
        raise ValueError("a loaded model cannot be sent to Ray workers; pass a model source instead")
    if hasattr(cluster, "map"):
        return contextlib.nullcontext(cluster)
    from forward_influence.execution.cluster import ClusterSpec, RayPool

    return RayPool(cluster or ClusterSpec(address=ray), source, device)
