#!/usr/bin/env python
"""GPU check: exactness on the device, then speed at the study's shapes, one ``name=value`` line per result.

One command for a bare, offline GPU machine — no weights, tokenizer, data or
network; the package need not be installed (the repo root is put on
``sys.path``); nothing imports spaCy, gguf or platformdirs::

    python scripts/gpu_check.py --device cuda            # <= 5 minutes on one H200
    python scripts/gpu_check.py --device cpu --tiny      # the same code on tiny shapes (a test runs it)

Sections, in this order, each under its own deadline (``--budgets
name=seconds,...`` changes them, ``--budget-s`` caps the whole run): when
one runs out, the section has printed what it finished, prints
``section_<name>_status=timeout`` and the script goes on. Speed sections run
in the device's default dtype (bfloat16 on CUDA); ``--tiny`` runs them in
bfloat16 too, so that the CPU smoke run goes through the GPU run's code
paths, on tiny shapes, with every 3rd split position in the checks and one
thread.

``env``          device, versions, the device's row of the defaults table.
``correct``      the fast test tier's exactness checks (:mod:`forward_influence.tools.checks`)
                 on the tiny Llama/Qwen2 configs on this device, float32 then bfloat16
                 (bf16 against a float32 oracle, the measured precision floor as
                 tolerance): engine split/sliding = 4-D-mask forward for each kernel
                 that runs here (CUDA: the memory-efficient fused kernel and matmul),
                 layer/head ablation = masked eager attention, kernels agree,
                 compressed continuation = masked forward; float32: batched = one at
                 a time, null rows, a wrong RoPE position caught, Fisher m = 0 = the
                 ablation; float64: Fisher gradient = finite difference.
``engine_bf16``  exact engine at the study shape (random Llama-3.1-8B), N = 1,024 and
``engine_fp32``  4,096, F = 256: ablations/s, fraction of the measured matmul peak of
                 that dtype (target >= 0.6 in bf16), the naive loop's rate and the
                 speedup over it; in the sections' dtype also sweeps of batch size,
                 kernel (only those whose checks passed), score chunk (matmul kernel)
                 and logit chunk at N = 4,096, which give the recommendations.
``naive``        engine vs the naive loop on the embedded model's shape (SmolLM2-135M),
                 N = 1,024, where the naive loop is launch-bound (target >= 10x).
``fisher``       the Fisher estimate for all 4,096 prefix tokens (8 samples).
``compress``     prefill + scoring + cut (budget 0.2) at 16k and 32k tokens for full,
                 snapkv, expected_attention, infokv; InfoKV / SnapKV; the entropy
                 logit chunk; then 64k if the deadline allows.
``decode``       tokens/s generating 48 tokens after a 4,096-token prompt with the
                 cache kept at 25% (InfoKV, SnapKV; cut every 16 steps) and with the
                 full cache (prefill time subtracted).

Lines (the first ``=`` separates name and value):

* ``check_<name>=pass|FAIL`` with ``check_<name>_value`` and ``_bound``;
* ``speed_<name>=<positive number>`` (rates, seconds, ratios) and
  ``mem_<name>_gib=<positive number>`` (CUDA: peak allocated memory of that
  item, ``torch.cuda.max_memory_allocated`` reset per item; CPU: the
  process's peak resident set so far);
* ``recommend_<device>_<field>=<value>``: the best measured value of a field
  of :data:`forward_influence.runtime.devices.DEFAULTS` (copy it there, with
  the measurement into ``SOURCES``); only fields this script measures —
  ``batch_cap``, ``kernel``, ``score_bytes``, ``logit_bytes`` and
  ``kl_bytes`` (swept together), ``entropy_logit_bytes``; ``batch_cap`` is
  the fastest batch of the sweep (``info_sweep_batch_cap_best_is_largest=yes``:
  a larger cap may be faster still). The dtype is a precision choice and the
  memory fractions are safety margins: no line. From ``--tiny`` runs they
  are smoke values (``info_recommendations_valid=no``);
* ``target_<name>=met|missed`` with ``target_<name>_goal``;
* ``info_<name>``, ``env_<name>``, ``section_<name>_status|_s|_error``.

Exit status: 0 when every check passed and no section raised; 1 otherwise;
2 for bad arguments (e.g. ``--device cuda`` with no GPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package is not installed on the GPU machine

import os  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded; never wait on a network that is not there
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from typing import Any

import numpy as np  # noqa: E402
import torch  # noqa: E402

from forward_influence.compress import (  # noqa: E402
    CompressedCache,
    DecodingConfig,
    FIOracle,
    compress_prompt,
    get_compressor,
)
from forward_influence.errors import InputError  # noqa: E402
from forward_influence.hf.generation import generate  # noqa: E402
from forward_influence.hf.models import DTYPES, resolve_device  # noqa: E402
from forward_influence.measurement.engine import Ablation, ForwardInfluenceEngine  # noqa: E402
from forward_influence.measurement.fisher import FisherEstimator  # noqa: E402
from forward_influence.measurement.reference import float32_kl, naive_split_logits  # noqa: E402
from forward_influence.runtime.devices import defaults_for, recommendation_name  # noqa: E402
from forward_influence.tools import checks  # noqa: E402
from forward_influence.tools.perf import MatmulProbe, flops_per_ablation, random_ids, shaped_model, sync  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
TARGET_FRACTION_OF_PEAK = 0.6  # bf16 engine at the study shape (issue 17)
TARGET_SPEEDUP_EMBEDDED = 10.0  # engine over the launch-bound naive loop, SmolLM2 shape
DTYPE_TAG = {torch.float32: "fp32", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Plan:
    """Sizes of every section (:data:`FULL` on a GPU, :data:`TINY` for smoke runs)."""

    study: str
    embedded: str
    engine_ns: tuple[int, ...]
    n_future: int
    engine_positions: int  # ablations timed per N (bf16; fp32 takes a quarter)
    naive_positions: int
    batch_sweep: tuple[int, ...]
    score_bytes_sweep: tuple[int, ...]
    logit_bytes_sweep: tuple[int, ...]
    embedded_n: int
    embedded_positions: int
    fisher_n: int
    compress_lengths: tuple[int, ...]
    compress_optional: tuple[int, ...]  # only if the deadline allows
    entropy_bytes_sweep: tuple[int, ...]
    decode_prompt: int
    decode_new: int
    probe_n: int
    probe_s: float
    check_stride: int  # every k-th split position in the exactness checks (1: as the tests)
    check_archs: tuple[str, ...]  # tiny configs the engine checks run on
    budgets: dict[str, float] = field(default_factory=dict)


FULL = Plan(
    study="llama3.1-8b",
    embedded="smollm2-135m",
    engine_ns=(1024, 4096),
    n_future=256,
    engine_positions=64,
    naive_positions=8,
    batch_sweep=(16, 32, 64, 128, 256),
    score_bytes_sweep=(256 * MiB, 1 * GiB, 4 * GiB),
    logit_bytes_sweep=(512 * MiB, 2 * GiB, 8 * GiB),
    embedded_n=1024,
    embedded_positions=64,
    fisher_n=4096,
    compress_lengths=(16384, 32768),
    compress_optional=(65536,),
    entropy_bytes_sweep=(128 * MiB, 1 * GiB),
    decode_prompt=4096,
    decode_new=48,
    probe_n=8192,
    probe_s=0.5,
    check_stride=1,
    check_archs=("llama", "qwen2"),
    budgets=dict(env=20, correct=45, engine_bf16=60, naive=20, fisher=20, compress=60, decode=25, engine_fp32=35),
)
TINY = Plan(
    study="tiny",
    embedded="tiny",
    engine_ns=(64,),
    n_future=16,
    engine_positions=8,
    naive_positions=4,
    batch_sweep=(2, 4),
    score_bytes_sweep=(64 << 10, 8 * MiB),
    logit_bytes_sweep=(1 * MiB, 128 * MiB),
    embedded_n=64,
    embedded_positions=8,
    fisher_n=128,
    compress_lengths=(256,),
    compress_optional=(512,),
    entropy_bytes_sweep=(64 << 10, 128 * MiB),
    decode_prompt=128,
    decode_new=8,
    probe_n=256,
    probe_s=0.05,
    check_stride=3,
    check_archs=("llama", "qwen2"),
    budgets=dict(env=60, correct=120, engine_bf16=60, naive=60, fisher=60, compress=60, decode=60, engine_fp32=60),
)


class SectionTimeout(BaseException):
    """A section's deadline passed (a BaseException: no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def fire(signum: int, frame: Any) -> None:
        raise SectionTimeout()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Run:
    """The device, the plan, built models, what was printed, and the clock."""

    def __init__(self, dev: torch.device, plan: Plan, tiny: bool):
        self.dev, self.plan, self.tiny = dev, plan, tiny
        self.defaults = defaults_for(dev)
        # The sections' dtype: the device's default; --tiny takes CUDA's (bfloat16), so that
        # the CPU smoke run goes through the code paths the GPU run will.
        self.dtype = DTYPES[defaults_for("cuda").dtype if tiny else self.defaults.dtype]
        self.models: dict[tuple[str, torch.dtype], Any] = {}
        self.failed = 0
        self.errors = 0
        self.bad_kernels: set[str] = set()  # kernels with a failed exactness check on this device
        self.section_end = 0.0

    # ------------------------------------------------------------ printing
    def line(self, name: str, value: Any) -> None:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{name}={text}", flush=True)

    def check(self, c: checks.Check) -> None:
        self.line(f"check_{c.name}", "pass" if c.passed else "FAIL")
        self.line(f"check_{c.name}_value", float(c.value))
        self.line(f"check_{c.name}_bound", float(c.bound))
        if not c.passed:
            self.failed += 1
            self.line(f"check_{c.name}_detail", str(c))

    def run_checks(self, name: str, fn: Callable[[], list[checks.Check]], kernel: str | None = None) -> bool:
        """Print a check function's verdicts; an exception is a failed check."""
        try:
            results = fn()
        except Exception as e:  # noqa: BLE001 (a crash on the device is a finding)
            results = [checks.Check(name, float("inf"), 0.0, detail=f"{type(e).__name__}: {e}".splitlines()[0][:200])]
            traceback.print_exc(file=sys.stderr)
        for c in results:
            self.check(c)
        ok = all(c.passed for c in results)
        if kernel is not None and not ok:
            self.bad_kernels.add(kernel)
        return ok

    def target(self, name: str, value: float, goal: float) -> None:
        self.line(f"target_{name}_goal", goal)
        self.line(f"target_{name}", "met" if value >= goal else "missed")

    # --------------------------------------------------------------- state
    def left(self) -> float:
        return self.section_end - time.perf_counter()

    def model(self, shape: str, dtype: torch.dtype) -> Any:
        """A random model of ``shape``; one dtype of a shape at a time (an 8B model
        in float32 is 32 GB): another dtype converts the one held."""
        key = (shape, dtype)
        if key not in self.models:
            held = [k for k in self.models if k[0] == shape]
            if held:
                self.models[key] = self.models.pop(held[0]).to(dtype)
            else:
                self.models[key] = shaped_model(shape, self.dev, dtype)
        return self.models[key]


def tidy(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def timed(dev: torch.device, fn: Callable[[], Any]) -> tuple[float, Any, int]:
    """Seconds, result and peak memory in bytes of ``fn()``: on CUDA the
    allocator's peak, reset for this item; on CPU the process's peak resident
    set (never reset: sampling the heap per module would distort the timing)."""
    tidy(dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    seconds = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return seconds, out, peak


# --------------------------------------------------------------------------- #
# Sections
# --------------------------------------------------------------------------- #


def section_env(run: Run) -> None:
    import transformers

    dev = run.dev
    run.line("env_device", dev.type)
    run.line("env_tiny", "yes" if run.tiny else "no")
    run.line("env_python", platform.python_version())
    run.line("env_torch", torch.__version__)
    run.line("env_transformers", transformers.__version__)
    run.line("env_float32_matmul_precision", torch.get_float32_matmul_precision())
    run.line("env_threads", torch.get_num_threads())
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        run.line("env_device_name", props.name.replace(" ", "_"))
        run.line("env_cuda", torch.version.cuda)
        run.line("env_capability", f"{props.major}.{props.minor}")
        run.line("env_gpu_memory_gib", props.total_memory / GiB)
        torch.ones(1, device=dev).sum().item()  # the CUDA context, here rather than in a timed section
    for name, value in vars(run.defaults).items():
        run.line(f"env_defaults_{name}", value)
    run.line("info_recommendations_valid", "no (tiny shapes)" if run.tiny else "yes")


def section_correct(run: Run) -> None:
    dev, stride = run.dev, run.plan.check_stride
    ids = checks.tiny_ids()
    positions = list(range(0, checks.SPLIT_N, stride))
    sources = checks.SLIDING_SOURCES[::stride]
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, checks.TINY_VOCAB, (64 + 12,), generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        tag = DTYPE_TAG[dtype]
        for arch in run.plan.check_archs:
            model = checks.tiny_model(arch, device=dev, dtype=dtype)
            for kernel in checks.kernels(model):
                run.run_checks(
                    f"engine_split_{arch}_{kernel}_{tag}",
                    kernel=kernel,
                    fn=lambda: checks.check_split(
                        model, ids, kernel, positions, name=f"engine_split_{arch}_{kernel}_{tag}"
                    ),
                )
                run.run_checks(
                    f"engine_sliding_{arch}_{kernel}_{tag}",
                    kernel=kernel,
                    fn=lambda: checks.check_sliding(
                        model, ids, kernel, sources, name=f"engine_sliding_{arch}_{kernel}_{tag}"
                    ),
                )
        eager = checks.tiny_model("llama", attn="eager", device=dev, dtype=dtype)
        for kernel in checks.kernels(eager):
            run.run_checks(
                f"engine_layer_head_{kernel}_{tag}",
                kernel=kernel,
                fn=lambda: checks.check_layer_head(eager, ids, kernel, name=f"engine_layer_head_{kernel}_{tag}"),
            )
        for mode in ("split", "sliding"):
            run.run_checks(
                f"engine_kernels_agree_{mode}_{tag}",
                kernel="flash",
                fn=lambda: checks.check_kernels_agree(eager, ids, mode, name=f"engine_kernels_agree_{mode}_{tag}"),
            )
        fi = torch.rand(64, generator=torch.Generator().manual_seed(5)).double()
        for comp in (get_compressor("streaming_llm", budget=0.4, n_sink=2), FIOracle(budget=0.4, fi=fi)):
            name = f"compress_continuation_{comp.name}_{tag}"
            run.run_checks(name, fn=lambda: checks.check_compressed_continuation(eager, prompt, 64, comp, name=name))
    model = checks.tiny_model("llama", device=dev)
    run.run_checks(
        "engine_batched_equals_single_fp32",
        fn=lambda: checks.check_batched_equals_single(model, ids, name="engine_batched_equals_single_fp32"),
    )
    run.run_checks("engine_null_rows_fp32", fn=lambda: checks.check_null_rows(model, ids, name="engine_null_rows_fp32"))
    run.run_checks(
        "engine_wrong_position_caught_fp32",
        fn=lambda: checks.check_wrong_position_caught(model, ids, name="engine_wrong_position_caught_fp32"),
    )
    fids = torch.randint(0, checks.TINY_VOCAB, (36,), generator=torch.Generator().manual_seed(1))
    run.run_checks(
        "fisher_m0_is_ablation_fp32",
        fn=lambda: checks.check_fisher_ablation(model, fids, name="fisher_m0_is_ablation_fp32"),
    )
    m64 = checks.tiny_model("llama", device=dev, dtype=torch.float64)
    run.run_checks(
        "fisher_gradient_fd_fp64", fn=lambda: checks.check_fisher_gradient(m64, fids, name="fisher_gradient_fd_fp64")
    )
    run.line("info_bad_kernels", ",".join(sorted(run.bad_kernels)) or "none")


def measure_engine(run: Run, model: Any, n: int, n_pos: int, **engine_kw: Any) -> tuple[float, Any, int, int]:
    """Ablations/s of ``n_pos`` sources at split ``n`` (after a warm-up), the result,
    peak memory and the batch size used."""
    f = run.plan.n_future
    ids = random_ids(n + f, model.config.vocab_size)
    eng = ForwardInfluenceEngine(model, **engine_kw)
    pre = eng.prefill(ids[:n])
    eng.split(ids, n, f, [Ablation((0,))], prefill=pre)  # warm-up
    pos = np.linspace(0, n - 1, n_pos).round().astype(int).tolist()
    seconds, res, peak = timed(run.dev, lambda: eng.split(ids, n, f, [Ablation((p,)) for p in pos], prefill=pre))
    return n_pos / seconds, res, peak, eng.auto_batch_size(n, f)


def measure_naive(run: Run, model: Any, n: int, n_pos: int) -> tuple[float, int]:
    """Ablations/s of the naive loop (copy the cache, delete the entry, HF forward,
    float32 KL), after its reference forward, and its peak memory."""
    f = run.plan.n_future
    ids = random_ids(n + f, model.config.vocab_size)
    pos = np.linspace(0, n - 1, n_pos).round().astype(int).tolist()
    it = naive_split_logits(model, ids, n, f, pos)
    ref = next(it)  # prefill + reference forward: warm-up, untimed

    def loop() -> None:
        for lg in it:
            float32_kl(ref, lg)

    seconds, _, peak = timed(run.dev, loop)
    return n_pos / seconds, peak


def engine_section(dtype: torch.dtype) -> Callable[[Run], None]:
    def section(run: Run) -> None:
        plan, dev, tag = run.plan, run.dev, DTYPE_TAG[dtype]
        sweeps = run.dtype == dtype  # the sections' dtype gives the recommendations
        n_pos = (
            plan.engine_positions if dtype != torch.float32 or dev.type == "cpu" else max(4, plan.engine_positions // 4)
        )
        model = run.model(plan.study, dtype)
        probe = MatmulProbe(dev, dtype, plan.probe_s, n=plan.probe_n)
        probe()
        run.line(f"info_matmul_{tag}_n", plan.probe_n)
        for n in plan.engine_ns:
            rate, res, peak, batch = measure_engine(run, model, n, n_pos)
            probe()  # interleaved: the peak is the probes' sustained rate so far
            flops = flops_per_ablation(model.config, n, plan.n_future)["total"]
            frac = rate * flops / (probe.sustained * 1e9)
            run.line(f"speed_engine_{tag}_n{n}_abl_per_s", rate)
            run.line(f"speed_engine_{tag}_n{n}_fraction_of_peak", frac)
            run.line(f"speed_matmul_{tag}_n{n}_sustained_tflops", probe.sustained / 1e3)
            run.line(f"info_engine_{tag}_n{n}_tflop_per_ablation", flops / 1e12)
            run.line(f"mem_engine_{tag}_n{n}_gib", peak / GiB)
            run.line(f"info_engine_{tag}_n{n}_batch", batch)
            run.line(f"info_engine_{tag}_n{n}_positions", n_pos)
            run.line(f"info_engine_{tag}_n{n}_precision_floor_median", float(np.median(res.precision_floor)))
            run.line(f"info_engine_{tag}_n{n}_noise_floor_max", float(res.noise_floor.max()))
            run.line(f"info_engine_{tag}_n{n}_shared_reference", "yes" if res.shared_reference else "no")
            if dtype == torch.bfloat16:
                run.target(f"engine_bf16_n{n}_fraction_of_peak", frac, TARGET_FRACTION_OF_PEAK)
            naive, naive_peak = measure_naive(run, model, n, plan.naive_positions)
            run.line(f"speed_naive_{tag}_n{n}_abl_per_s", naive)
            run.line(f"mem_naive_{tag}_n{n}_gib", naive_peak / GiB)
            run.line(f"speed_engine_over_naive_{tag}_n{n}", rate / naive)
        run.line(f"speed_matmul_{tag}_best_single_tflops", probe.burst / 1e3)
        if not sweeps:
            return
        n = max(plan.engine_ns)
        best: dict[str, tuple[float, Any]] = {}

        def sweep(
            field_name: str, values: tuple, make_kw: Callable[[Any], dict], n_pos_for: Callable[[Any], int]
        ) -> None:
            for v in values:
                rate, _, peak, _ = measure_engine(run, model, n, n_pos_for(v), **make_kw(v))
                run.line(f"speed_sweep_{field_name}_{v}_{tag}_n{n}_abl_per_s", rate)
                run.line(f"mem_sweep_{field_name}_{v}_{tag}_n{n}_gib", peak / GiB)
                if field_name not in best or rate > best[field_name][0]:
                    best[field_name] = (rate, v)
            run.line(recommendation_name(dev.type, field_name), best[field_name][1])

        sweep("batch_cap", plan.batch_sweep, lambda b: {"batch_size": b}, lambda b: 2 * b)
        bs = best["batch_cap"][1]
        run.line("info_sweep_batch_cap_best_is_largest", "yes" if bs == max(plan.batch_sweep) else "no")
        usable = [k for k in checks.kernels(model) if k not in run.bad_kernels]
        if usable:
            sweep("kernel", tuple(usable), lambda k: {"batch_size": bs, "kernel": k}, lambda _: bs)
        sweep(
            "score_bytes",
            plan.score_bytes_sweep,
            lambda s: {"batch_size": bs, "kernel": "matmul", "max_score_bytes": s},
            lambda _: bs,
        )
        for key in ("logit_bytes", "kl_bytes"):
            if key == "kl_bytes":  # swept together with logit_bytes: one KL pass per logit chunk
                run.line(recommendation_name(dev.type, key), best["logit_bytes"][1])
                continue
            sweep(
                key, plan.logit_bytes_sweep, lambda s: {"batch_size": bs, "logit_bytes": s, "kl_bytes": s}, lambda _: bs
            )

    return section


def section_naive(run: Run) -> None:
    plan = run.plan
    dtype = run.dtype
    model = run.model(plan.embedded, dtype)
    n = plan.embedded_n
    rate, _, peak, batch = measure_engine(run, model, n, plan.embedded_positions)
    naive, naive_peak = measure_naive(run, model, n, plan.embedded_positions)
    tag = DTYPE_TAG[dtype]
    run.line(f"speed_embedded_engine_{tag}_n{n}_abl_per_s", rate)
    run.line(f"speed_embedded_naive_{tag}_n{n}_abl_per_s", naive)
    run.line(f"speed_embedded_engine_over_naive_{tag}_n{n}", rate / naive)
    run.line(f"mem_embedded_engine_{tag}_n{n}_gib", peak / GiB)
    run.line(f"mem_embedded_naive_{tag}_n{n}_gib", naive_peak / GiB)
    run.line(f"info_embedded_engine_{tag}_n{n}_batch", batch)
    run.target(f"embedded_engine_over_naive_{tag}_n{n}", rate / naive, TARGET_SPEEDUP_EMBEDDED)
    if plan.embedded != plan.study:
        run.models.pop((plan.embedded, dtype), None)


def section_fisher(run: Run) -> None:
    plan = run.plan
    dtype = run.dtype
    model = run.model(plan.study, dtype)
    n, f = plan.fisher_n, plan.n_future
    ids = random_ids(n + f, model.config.vocab_size)
    FisherEstimator(model, samples=1).split(ids, min(n, 256), min(f, 64))  # warm-up
    seconds, res, peak = timed(run.dev, lambda: FisherEstimator(model, samples=8).split(ids, n, f))
    tag = DTYPE_TAG[dtype]
    run.line(f"speed_fisher_{tag}_n{n}_all_tokens_s", seconds)
    run.line(f"mem_fisher_{tag}_n{n}_gib", peak / GiB)
    run.line(f"info_fisher_{tag}_n{n}_sources", int(res.kl.shape[0]))


def section_compress(run: Run) -> None:
    plan = run.plan
    dtype = run.dtype
    model = run.model(plan.study, dtype)
    tag = DTYPE_TAG[dtype]
    methods = ("full", "snapkv", "expected_attention", "infokv")
    warm = random_ids(2048 if not run.tiny else 128, model.config.vocab_size).to(run.dev)
    for m in methods:
        compress_prompt(model, warm, get_compressor(m, budget=0.2))

    def lengths(sizes: tuple[int, ...], last: float) -> float:
        for length in sizes:
            if last and run.left() < 2.5 * last:  # attention's share grows: a doubled length takes 2-3x
                run.line(f"info_compress_{length}", "skipped (deadline)")
                break
            ids = random_ids(length, model.config.vocab_size).to(run.dev)
            times = {}
            for m in methods:
                seconds, _, peak = timed(run.dev, lambda: compress_prompt(model, ids, get_compressor(m, budget=0.2)))
                times[m] = seconds
                run.line(f"speed_compress_{m}_{tag}_{length}_s", seconds)
                run.line(f"mem_compress_{m}_{tag}_{length}_gib", peak / GiB)
            run.line(f"speed_compress_infokv_over_snapkv_{tag}_{length}", times["infokv"] / times["snapkv"])
            last = sum(times.values())
        return last

    last = lengths(plan.compress_lengths, 0.0)
    length = plan.compress_lengths[0]
    ids = random_ids(length, model.config.vocab_size).to(run.dev)
    best = None
    for size in plan.entropy_bytes_sweep:  # CompressedCache's chunk_bytes (default: the table's)

        def cut() -> None:
            cache = CompressedCache(model, get_compressor("infokv", budget=0.2), chunk_bytes=size)
            cache.extend(ids)
            cache.cut(0.2 * length)

        seconds, _, _ = timed(run.dev, cut)
        run.line(f"speed_sweep_entropy_logit_bytes_{size}_{tag}_{length}_s", seconds)
        if best is None or seconds < best[0]:
            best = (seconds, size)
    run.line(recommendation_name(run.dev.type, "entropy_logit_bytes"), best[1])
    lengths(plan.compress_optional, last)


def section_decode(run: Run) -> None:
    plan = run.plan
    dtype = run.dtype
    model = run.model(plan.study, dtype)
    tag = DTYPE_TAG[dtype]
    prompt = random_ids(plan.decode_prompt, model.config.vocab_size)
    cfg = DecodingConfig(cache_budget=0.25, interval=16)

    def decode(m: str, c: DecodingConfig, n: int, ids: torch.Tensor) -> tuple[list[int], Any]:
        """transformers' generate with ``m`` cutting the cache (greedy; every step runs)."""
        with get_compressor(m).apply(model, c) as dec:
            return generate(model, ids, max_new_tokens=n, min_new_tokens=n), dec

    decode("snapkv", DecodingConfig(cache_budget=0.25, interval=4), 8, prompt[:64])  # warm-up
    rates = {}
    for m in ("full", "infokv", "snapkv"):
        t_pre, _, _ = timed(run.dev, lambda: CompressedCache(model, get_compressor(m)).extend(prompt.to(run.dev)))
        seconds, (tokens, dec), peak = timed(run.dev, lambda: decode(m, cfg, plan.decode_new, prompt))
        label = m if m == "full" else f"{m}_25pct"
        rates[m] = len(tokens) / max(seconds - t_pre, 1e-9)
        run.line(f"speed_decode_{label}_{tag}_tok_per_s", rates[m])
        run.line(f"mem_decode_{label}_{tag}_gib", peak / GiB)
        run.line(f"info_decode_{label}_final_cache", float(dec.cache_sizes[-1]))
    for m in ("snapkv", "infokv"):
        run.line(f"speed_decode_{m}_25pct_over_full_{tag}", rates[m] / rates["full"])


SECTIONS: dict[str, Callable[[Run], None]] = {
    "env": section_env,
    "correct": section_correct,
    "engine_bf16": engine_section(torch.bfloat16),
    "naive": section_naive,
    "fisher": section_fisher,
    "compress": section_compress,
    "decode": section_decode,
    "engine_fp32": engine_section(torch.float32),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: the same code in seconds (CPU smoke run)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    ap.add_argument("--budget-s", type=float, default=290.0, help="wall-clock cap of the whole run")
    ap.add_argument("--budgets", default="", help="per-section deadlines in seconds, e.g. compress=90,decode=10")
    args = ap.parse_args(argv)
    try:
        dev = resolve_device(args.device)
    except InputError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        print(f"gpu_check: unknown sections {unknown}; valid: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if dev.type != "cuda" and not args.tiny:
        print("gpu_check: the study's shapes need a GPU (an 8B model); pass --tiny on the CPU", file=sys.stderr)
        return 2
    torch.set_float32_matmul_precision("highest")  # float32 means float32 (no TF32) in checks and timings
    if args.tiny and dev.type == "cpu":
        # Tiny shapes are latency-bound: on the shared 2-core machine two OpenMP
        # threads made one tiny forward 75x slower (0.96 s vs 13 ms) than one thread.
        torch.set_num_threads(int(os.environ.get("FI_NUM_THREADS", "1")))
    plan = TINY if args.tiny else FULL
    try:
        given = {k.strip(): float(v) for k, v in (item.split("=") for item in args.budgets.split(",") if item.strip())}
    except ValueError:
        print(f"gpu_check: --budgets takes name=seconds pairs, got {args.budgets!r}", file=sys.stderr)
        return 2
    if set(given) - set(SECTIONS):
        print(
            f"gpu_check: unknown sections in --budgets {sorted(set(given) - set(SECTIONS))}; "
            f"valid: {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    plan = replace(plan, budgets={**plan.budgets, **given})
    run = Run(dev, plan, args.tiny)
    end = time.perf_counter() + args.budget_s
    for name in SECTIONS:
        if name not in wanted:
            continue
        budget = min(plan.budgets[name], end - time.perf_counter())
        status, t0 = "ok", time.perf_counter()
        if budget < 1:
            status = "skipped"
        else:
            run.section_end = t0 + budget
            try:
                with deadline(budget):
                    SECTIONS[name](run)
            except SectionTimeout:
                status = "timeout"
            except Exception as e:  # noqa: BLE001 (report, go on with the next section)
                status = "error"
                run.errors += 1
                run.line(f"section_{name}_error", f"{type(e).__name__}: {e}".splitlines()[0][:300])
                traceback.print_exc(file=sys.stderr)
        tidy(dev)
        run.line(f"section_{name}_status", status)
        run.line(f"section_{name}_s", time.perf_counter() - t0)
    run.line("summary_checks_failed", run.failed)
    run.line("summary_section_errors", run.errors)
    return 1 if run.failed or run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
