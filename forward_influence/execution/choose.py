"""Which pool a run uses: :class:`~forward_influence.execution.local.LocalPool`, or
:class:`~forward_influence.execution.cluster.RayPool` with ``--ray``."""

from __future__ import annotations

import contextlib
from typing import Any

from forward_influence.execution.cluster import ClusterSpec, RayPool
from forward_influence.execution.local import LocalPool
from forward_influence.execution.pool import Pool
from forward_influence.hf.models import LoadedModel


def open_pool(
    ray: str | None, model: LoadedModel | None, source: Any, device: str, cluster: Any = None
) -> contextlib.AbstractContextManager[Pool]:
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
    cluster : ClusterSpec or an open Pool, optional
        Overrides ``ray`` with a full specification (tests: a stand-in GPU
        resource), or an open pool to reuse (left open).
    """
    if ray is None and cluster is None:
        return LocalPool(model if model is not None else source())
    if model is not None:
        raise ValueError("a loaded model cannot be sent to Ray workers; pass a model source instead")
    if cluster is not None and not isinstance(cluster, ClusterSpec):  # an open pool, reused and left open
        return contextlib.nullcontext(cluster)
    return RayPool(cluster or ClusterSpec(address=ray), source, device)
