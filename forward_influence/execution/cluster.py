"""Run a job's units on a Ray cluster (``--ray``): one actor per GPU.

``--ray ADDRESS``:

``auto``
    join the cluster running on this machine (``ray start --head`` / ``--address``).
``local:N``
    start a private single-node cluster on loopback with ``N`` workers.
``HOST:PORT`` (or ``ray://HOST:PORT``)
    join that head.

Each worker is an actor that loads the model once (``num_gpus=1``; on a
cluster without GPUs, or with ``--device cpu``, a CPU actor with
``num_cpus=threads``) and takes units from the driver's queue, one at a time.
Results go back to the driver, which alone writes the run directory.

Faults:

* a worker process that dies mid-unit is restarted by Ray (actor
  ``max_restarts``) and its unit retried on it (``max_task_retries``);
* a unit that raises, or whose worker could not be revived, goes back to
  the queue for the next free worker, up to ``max_attempts`` tries; then it
  is reported as failed by name and the other units finish;
* a dead actor is replaced by a fresh one (checked like the first ones).

Workers report their model provenance, package versions and git sha
(:func:`forward_influence.execution.pool.worker_report`); if two disagree the run
is refused (:func:`forward_influence.execution.pool.check_agreement`).

>>> parse_address("local:2")
(None, 2)
>>> parse_address("auto")
('auto', None)
>>> parse_address("local:0")
Traceback (most recent call last):
...
forward_influence.errors.InputError: --ray local:N needs N >= 1 workers; got 'local:0'
"""

from __future__ import annotations

import collections
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forward_influence.config import INSTALL_HINT, parse_address, ray_available  # noqa: F401  (the one --ray validation)
from forward_influence.errors import InputError
from forward_influence.execution.pool import Outcome, check_agreement, worker_report

log = logging.getLogger("forward_influence")

START_TIMEOUT_S = 900.0  # loading an 8B model on a busy node takes minutes


@dataclass(frozen=True)
class ClusterSpec:
    """How to use the cluster.

    Attributes
    ----------
    address : str
        ``auto``, ``local:N``, ``HOST:PORT``.
    workers : int, optional
        Default: ``N`` of ``local:N``, else one per GPU (per ``threads`` CPUs
        without GPUs).
    gpu_resource : str
        The resource a GPU actor takes one of (tests stand in a custom one).
    threads : int, optional
        Torch threads per worker. Default ``$FI_NUM_THREADS``, else the CPUs
        per worker (``local:N`` on CPU), else 4.
    max_restarts, max_task_retries : int
        Ray's: restarts of a dead actor; retries of a unit whose actor died.
    max_attempts : int
        Tries of a unit, counted by the driver, before it is reported failed.
    """

    address: str
    workers: int | None = None
    gpu_resource: str = "GPU"
    threads: int | None = None
    max_restarts: int = 3
    max_task_retries: int = 2
    max_attempts: int = 3


class _Worker:
    """The actor: loads the model once, then runs units of whatever job it is given."""

    def __init__(self, source: Any, threads: int):
        import torch

        from forward_influence.runtime.host import retain_freed_memory

        torch.set_num_threads(threads)
        retain_freed_memory()  # the actor's process is fi-measure's own, as the CLI's is (runtime.host)
        self.job_key: str | None = None
        self.error: str | None = None
        try:
            self.lm = source()
            self.report_ = worker_report(self.lm)
        except Exception as e:  # reported to the driver as one line, not a restart loop
            self.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"

    def report(self) -> dict[str, Any]:
        return {"error": self.error} if self.error else self.report_

    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    def pid(self) -> int:
        return os.getpid()

    def run(self, key: str, job_box: list[Any], unit: Any) -> tuple[Any, int]:
        if self.error:  # a restart whose model load failed
            raise RuntimeError(f"worker could not load the model: {self.error}")
        if key != self.job_key:
            import ray

            self.job = ray.get(job_box[0])
            self.job.setup(self.lm)
            self.job_key = key
        return self.job.run(unit), os.getpid()


def _one_line(e: BaseException, limit: int = 200) -> str:
    """``Type: message``: the exception a unit raised (not Ray's wrapper), its
    last line, cut after the first sentence when long (Ray's actor errors)."""
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    msg = text[-1] if text else ""
    if len(msg) > limit and ". " in msg:
        msg = msg.split(". ")[0] + "."
    return f"{type(cause).__name__}: {msg}".strip()


class RayPool:
    """Run units on Ray actors; a context manager (actors killed on exit).

    An open pool can serve several runs (``measure(cfg, cluster=pool)``): its
    workers keep their model and take each run's job.

    Attributes
    ----------
    on_event : callable or None
        ``on_event(pool, event)`` on the driver after each unit's result has
        been handled and the queue refilled (tests inject faults with it).
    """

    local = False
    lm = None  # the model lives on the workers

    def __init__(self, spec: ClusterSpec, source: Any, device: str = "auto"):
        if not ray_available():
            raise InputError(INSTALL_HINT)
        self.spec, self.source, self.device = spec, source, device
        self.address, self.n_local = parse_address(spec.address)
        self.actors: list[Any] = []
        self.reports: list[dict[str, Any]] = []
        self.pids: list[int] = []
        self.started_ray = False
        self.restarts = 0
        self.replaced = 0
        self.requeued = 0
        self._tokenizer = None
        self._inflight: dict[Any, tuple[int, int, Any]] = {}
        self.on_event: Callable[[RayPool, str], None] | None = None

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> RayPool:
        if self.n_local is not None:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; read when ray is imported
        import ray

        if not ray.is_initialized():
            self._init(ray)
        try:
            self._start(ray)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _init(self, ray: Any) -> None:
        root = str(Path(__file__).resolve().parents[1])  # workers import this tree
        env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        kw: dict[str, Any] = {
            "log_to_driver": False,
            "logging_level": logging.WARNING,
            "runtime_env": {"env_vars": env},
        }
        if self.n_local is not None:
            cpus = max(os.cpu_count() or 1, self.n_local * (self.spec.threads or 1))
            ray.init(num_cpus=cpus, _node_ip_address="127.0.0.1", include_dashboard=False, **kw)
        else:
            try:
                ray.init(address=self.address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise InputError(
                    f"--ray {self.address}: no Ray cluster there ({_one_line(e)}); start one with `ray start --head` "
                    "or use local:N"
                ) from None
        self.started_ray = True

    def _plan(self, ray: Any) -> None:
        res = ray.cluster_resources()
        gpus = int(res.get(self.spec.gpu_resource, 0))
        self.gpu = self.device != "cpu" and gpus > 0
        if self.device.startswith("cuda") and not self.gpu:
            raise InputError(
                f"--device {self.device} but the Ray cluster has no {self.spec.gpu_resource}; use --device cpu or auto"
            )
        env_threads = os.environ.get("FI_NUM_THREADS")
        cpus = int(res.get("CPU", 1))
        if self.n_local is not None:
            self.n = self.spec.workers or self.n_local
        elif self.spec.workers:
            self.n = self.spec.workers
        else:
            self.n = gpus if self.gpu else 0
        default_threads = max(1, cpus // self.n) if (self.n_local is not None and not self.gpu) else 4
        self.threads = self.spec.threads or (int(env_threads) if env_threads else default_threads)
        if not self.gpu:
            self.threads = min(self.threads, cpus)
        if not self.n:
            self.n = max(1, cpus // self.threads)
        if self.gpu and self.n > gpus:
            raise InputError(
                f"--ray asks for {self.n} GPU workers but the cluster has {gpus} {self.spec.gpu_resource}; use "
                f"local:{gpus}"
            )
        if not self.gpu and self.n * self.threads > cpus:
            raise InputError(
                f"--ray asks for {self.n} CPU workers of {self.threads} threads but the cluster has {cpus} CPUs; "
                "ask for fewer workers or set FI_NUM_THREADS lower"
            )

    def _new_actor(self, ray: Any) -> Any:
        opts: dict[str, Any] = {"max_restarts": self.spec.max_restarts, "max_task_retries": self.spec.max_task_retries}
        if self.gpu and self.spec.gpu_resource == "GPU":
            opts.update(num_gpus=1, num_cpus=1)
        elif self.gpu:
            opts.update(resources={self.spec.gpu_resource: 1}, num_cpus=1)
        else:
            opts.update(num_cpus=self.threads)
        # "control": pid() answers while a unit runs in the default group
        actor_class = ray.remote(concurrency_groups={"control": 1})(_Worker)
        return actor_class.options(**opts).remote(self.source, self.threads)

    def _hello(self, ray: Any, actors: list[Any]) -> list[dict[str, Any]]:
        try:
            reports = ray.get([a.report.remote() for a in actors], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise InputError(
                f"Ray workers did not start within {START_TIMEOUT_S:.0f} s; check `ray status` for free resources"
            ) from None
        for r in reports:
            if r.get("error"):
                raise InputError(f"a Ray worker could not load the model: {r['error']}")
        return reports

    def _start(self, ray: Any) -> None:
        self._plan(ray)
        self.actors = [self._new_actor(ray) for _ in range(self.n)]
        self.reports = self._hello(ray, self.actors)
        check_agreement(self.reports)
        self.pids = [r["pid"] for r in self.reports]

    def __exit__(self, *exc: Any) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []
        if self.started_ray:
            ray.shutdown()
            self.started_ray = False

    # ----------------------------------------------------------- the driver
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            import ray

            self._tokenizer = ray.get(self.actors[0].tokenizer.remote())
        return self._tokenizer

    @property
    def provenance(self) -> dict[str, Any]:
        return self.reports[0]["model"]

    @property
    def runtime(self) -> dict[str, Any]:
        return self.reports[0]["runtime"]

    def execution(self) -> dict[str, Any]:
        """Where the run ran, for ``run.json``."""
        import ray

        return {
            "backend": "ray",
            "address": self.spec.address,
            "ray_version": ray.__version__,
            "workers": len(self.reports),
            "actor": f"{self.spec.gpu_resource}" if self.gpu else "CPU",
            "threads": self.threads,
            "hosts": sorted({r["host"] for r in self.reports}),
            "worker_restarts": self.restarts,
            "actors_replaced": self.replaced,
            "units_requeued": self.requeued,
        }

    def worker_pid(self, i: int) -> int:
        """Process id of worker ``i`` now (answers while it runs a unit)."""
        import ray

        return ray.get(self.actors[i].pid.options(concurrency_group="control").remote())

    def busy_workers(self) -> list[int]:
        """Workers with a unit in flight."""
        return sorted(i for i, _, _ in self._inflight.values())

    def map(self, job: Any, units: Iterable[Any]) -> Iterator[Outcome]:
        """Run ``job`` on ``units``; yield an :class:`Outcome` per unit as it ends."""
        import ray

        key, box = uuid.uuid4().hex, [ray.put(job)]  # in a list: the worker fetches it once, not per unit
        queue = collections.deque(enumerate(units))
        attempts: collections.Counter = collections.Counter()
        idle = collections.deque(range(len(self.actors)))
        self._inflight = {}

        def dispatch() -> None:
            while queue and idle:
                i, (k, unit) = idle.popleft(), queue.popleft()
                attempts[k] += 1
                self._inflight[self.actors[i].run.remote(key, box, unit)] = (i, k, unit)

        while queue or self._inflight:
            dispatch()
            if not self._inflight:  # every worker is gone
                while queue:
                    k, unit = queue.popleft()
                    yield Outcome(unit, error="no Ray worker left", attempts=attempts[k])
                return
            (ref,), _ = ray.wait(list(self._inflight), num_returns=1)
            i, k, unit = self._inflight.pop(ref)
            result = error = None
            try:
                result, pid = ray.get(ref)
                if pid != self.pids[i]:  # Ray restarted this worker's process
                    self.restarts += 1
                    self.pids[i] = pid
                idle.append(i)
            except ray.exceptions.RayActorError as e:  # the worker died and Ray could not finish the unit
                error = _one_line(e)
                if self._replace(ray, i, e):
                    idle.append(i)
            except ray.exceptions.RayError as e:  # the unit raised
                error = _one_line(e)
                idle.append(i)
            outcome = Outcome(unit, result, attempts=attempts[k]) if error is None else None
            if error is not None and attempts[k] < self.spec.max_attempts:
                log.warning(
                    "unit %s failed (attempt %d of %d: %s); retrying",
                    unit.name,
                    attempts[k],
                    self.spec.max_attempts,
                    error,
                )
                self.requeued += 1
                queue.appendleft((k, unit))
            elif error is not None:
                log.warning("unit %s failed after %d attempts: %s", unit.name, attempts[k], error)
                outcome = Outcome(unit, error=error, attempts=attempts[k])
            dispatch()  # keep the workers busy while the driver writes
            if self.on_event is not None:
                self.on_event(self, "result")
            if outcome is not None:
                yield outcome

    def _replace(self, ray: Any, i: int, e: BaseException) -> bool:
        """Replace worker ``i`` if it is dead; False when no replacement is left."""
        if not isinstance(e, ray.exceptions.ActorDiedError):
            return True  # restarting: Ray brings it back
        if self.replaced >= self.spec.max_attempts * max(1, self.n):
            log.warning("worker %d died and no replacement is left: %s", i, _one_line(e))
            return False
        self.replaced += 1
        actor = self._new_actor(ray)
        report = self._hello(ray, [actor])[0]
        check_agreement([self.reports[0], report])
        self.actors[i], self.pids[i] = actor, report["pid"]
        return True
