"""Per-device defaults of the measurement code, in one table.

Every default that depends on the device is read from :data:`DEFAULTS` and
written down nowhere else: the weights' dtype under ``--dtype auto``
(:func:`forward_influence.hf.models.resolve_dtype`), the attention kernel
under ``kernel="auto"`` (:mod:`forward_influence.hf`), the most
ablation rows per forward and the share of free memory they may use
(:meth:`forward_influence.measurement.engine.ForwardInfluenceEngine.auto_batch_size`),
the engine's working-set bounds that set its chunk sizes, and the logit
chunk of :class:`forward_influence.compress.CompressedCache`.
:data:`SOURCES` says where each value comes from.

**CUDA: nothing in the ``cuda`` row has been measured** — no CUDA line had
run when the table was written. Its values are the ones the code carried
before (engine chunks of 1 GiB scores / 2 GiB logits / 2 GiB KL, each at
most an eighth of the free memory; batches up to 256 rows in half the free
memory; the explicit matmul attention kernel; bfloat16 weights, docs/design.md §1.3).
``scripts/gpu_check.py`` measures them and prints one line per field it can
judge, ``recommend_<device>_<field>=<value>`` (e.g.
``recommend_cuda_batch_cap=64``); :func:`parse_recommendations` reads those
lines, and updating the table is copying each value into ``DEFAULTS`` and
its measurement into ``SOURCES``. The CPU row was measured on the 2-core
reference machine (README, *Figures measured here*).

>>> defaults_for("cpu").batch_cap
16
>>> parse_recommendations(["recommend_cuda_batch_cap=64", "speed_x=1.0"])
{('cuda', 'batch_cap'): 64}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

KERNELS = ("flash", "matmul")


@dataclass(frozen=True)
class DeviceDefaults:
    """Defaults for one device type.

    Attributes
    ----------
    dtype : str
        Weights' dtype for ``dtype="auto"`` (``float32``, ``bfloat16``, ``float16``).
    kernel : {"flash", "matmul"}
        Attention kernel for the shared prefix under ``kernel="auto"``:
        ``flash`` is PyTorch's fused attention that also returns the
        log-sum-exp (the flash kernel on CPU, the memory-efficient kernel on
        CUDA), used where it applies; ``matmul`` the explicit chunked path.
    batch_cap : int
        Most ablation rows per forward when no batch size is given.
    batch_memory_fraction : float
        Share of the free memory the rows of one forward may take.
    score_bytes, logit_bytes, kl_bytes : int
        Engine working sets: float32 attention scores held at once (query
        chunks), logits held at once (LM-head position chunks), one KL pass
        over the vocabulary.
    workspace_free_fraction : float or None
        Each engine working set at most this share of the free memory
        (None: the fixed sizes above).
    entropy_logit_bytes : int
        Logits held at once when a compressor needs every position's entropy.
    """

    dtype: str
    kernel: str
    batch_cap: int
    batch_memory_fraction: float
    score_bytes: int
    logit_bytes: int
    kl_bytes: int
    workspace_free_fraction: float | None
    entropy_logit_bytes: int

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {self.kernel!r}")


DEFAULTS: dict[str, DeviceDefaults] = {
    "cpu": DeviceDefaults(
        dtype="float32",
        kernel="flash",
        batch_cap=16,
        batch_memory_fraction=0.5,
        score_bytes=8 << 20,
        logit_bytes=128 << 20,
        kl_bytes=4 << 20,
        workspace_free_fraction=None,
        entropy_logit_bytes=128 << 20,
    ),
    "cuda": DeviceDefaults(
        dtype="bfloat16",
        kernel="matmul",
        batch_cap=256,
        batch_memory_fraction=0.5,
        score_bytes=1 << 30,
        logit_bytes=2 << 30,
        kl_bytes=2 << 30,
        workspace_free_fraction=1 / 8,
        entropy_logit_bytes=128 << 20,
    ),
}

_CUDA_UNMEASURED = "not measured (no CUDA run yet); the value the code carried before the table"
SOURCES: dict[str, dict[str, str]] = {
    "cpu": {
        "dtype": "docs/design.md §1.3 (exact FI needs float32; README *Precision*)",
        "kernel": "2-core CPU: PyTorch's fused CPU flash kernel (README, where the time goes)",
        "batch_cap": "2-core CPU, N=1024, F=256: 0.79 (B=8), 0.83 (16), 0.73 (32), 0.69 (64) abl/s",
        "batch_memory_fraction": "not measured (a safety margin)",
        "score_bytes": "2-core CPU: one query chunk's scores stay in cache",
        "logit_bytes": "2-core CPU: bounded LM-head/KL buffer (README, peak working memory)",
        "kl_bytes": "2-core CPU: one KL pass stays in cache",
        "workspace_free_fraction": "fixed sizes on CPU",
        "entropy_logit_bytes": "not measured",
    },
    "cuda": {
        "dtype": "docs/design.md §1.3 (bfloat16 weights on GPU); a precision choice, not a measurement",
        **{f.name: _CUDA_UNMEASURED for f in dataclasses.fields(DeviceDefaults) if f.name != "dtype"},
    },
}


def defaults_for(device: Any) -> DeviceDefaults:
    """The row for ``device`` (a ``torch.device`` or a string): ``cuda`` for
    CUDA devices, ``cpu`` for everything else."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return DEFAULTS["cuda" if kind == "cuda" else "cpu"]


def recommendation_name(device: str, field: str) -> str:
    """The ``name`` of a ``name=value`` line recommending ``DEFAULTS[device].field``.

    >>> recommendation_name("cuda", "kernel")
    'recommend_cuda_kernel'
    """
    if device not in DEFAULTS:
        raise ValueError(f"unknown device {device!r}; valid: {', '.join(DEFAULTS)}")
    names = [f.name for f in dataclasses.fields(DeviceDefaults)]
    if field not in names:
        raise ValueError(f"unknown field {field!r}; valid: {', '.join(names)}")
    return f"recommend_{device}_{field}"


def parse_recommendations(lines: Iterable[str]) -> dict[tuple[str, str], Any]:
    """``{(device, field): value}`` from ``recommend_<device>_<field>=<value>``
    lines (other lines are ignored), each value converted to the field's type.

    Raises
    ------
    ValueError
        A ``recommend_`` line that names no field of the table, or whose value
        the field cannot take.
    """
    fields = {f.name: f for f in dataclasses.fields(DeviceDefaults)}
    out: dict[tuple[str, str], Any] = {}
    for line in lines:
        name, sep, value = line.strip().partition("=")
        if not sep or not name.startswith("recommend_"):
            continue
        device, _, field = name.removeprefix("recommend_").partition("_")
        recommendation_name(device, field)  # raises with the valid choices
        kind = fields[field].type
        if field in ("dtype", "kernel"):
            parsed: Any = value
        elif "int" in str(kind):
            parsed = int(value)
        else:
            parsed = None if value == "None" else float(value)
        dataclasses.replace(DEFAULTS[device], **{field: parsed})  # validates (kernel names)
        out[(device, field)] = parsed
    return out
