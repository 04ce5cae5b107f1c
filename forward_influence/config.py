"""Run configuration, declared once: the CLI flags are generated from these fields.

>>> cfg = MeasureConfig(n_prefix=(64,), n_future=16)
>>> cfg.validate() is cfg
True
>>> MeasureConfig(mode="diagonal").validate()
Traceback (most recent call last):
...
forward_influence.errors.InputError: --mode must be one of split, sliding; got 'diagonal'
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from forward_influence.errors import InputError

MODES = ("split", "sliding")
METHODS = ("exact", "fisher")
FISHER_TARGETS = ("sample", "topk")

#: Fields that change how fast a run goes, not what it computes. A resumed run
#: may change them; any other difference makes an out dir refuse the run.
NON_SEMANTIC = frozenset({"out", "batch_size", "progress", "report", "ray"})

RAY_HELP = (
    "run on a Ray cluster: auto (join the running one), local:N (start N local workers) or HOST:PORT of a head; "
    "needs pip install 'forward_influence[ray]'"
)


def option(default: Any, help: str, **kw: Any) -> Any:
    meta = {"help": help, **{k: kw.pop(k) for k in list(kw) if k in ("flag", "type", "nargs")}}
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


INSTALL_HINT = "--ray needs Ray: pip install 'forward_influence[ray]'"


def ray_available() -> bool:
    """Whether Ray can be imported (found without importing it)."""
    return importlib.util.find_spec("ray") is not None


def parse_address(address: str) -> tuple[str | None, int | None]:
    """``(address to join, None)`` or ``(None, N)`` for ``local:N``."""
    if not address or not address.strip():
        raise InputError("--ray needs an address: auto, local:N or HOST:PORT")
    if address.startswith("local"):
        try:
            n = int(address.split(":", 1)[1])
        except (IndexError, ValueError):
            raise InputError(f"--ray local:N needs a number of workers N; got {address!r}") from None
        if n < 1:
            raise InputError(f"--ray local:N needs N >= 1 workers; got {address!r}")
        return None, n
    return address, None


def check_address(address: str) -> None:
    """Validate ``--ray`` before anything runs (no Ray import)."""
    parse_address(address)
    if not ray_available():
        raise InputError(INSTALL_HINT)


def check_ray(address: str | None) -> None:
    """Validate ``--ray`` (and that Ray is installed) without importing Ray."""
    if address is not None:
        check_address(address)


class ConfigBase:
    """Dict round trip shared by the run configs (``fi-measure``, ``fi-bench``)."""

    #: fields that change how fast a run goes, not what it computes
    non_semantic: frozenset[str] = NON_SEMANTIC

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def semantic(self) -> dict[str, Any]:
        """The fields that determine the results (see :attr:`non_semantic`)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.non_semantic}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kw)


@dataclass(frozen=True)
class MeasureConfig(ConfigBase):
    """Everything a Forward Influence measurement depends on."""

    model: str = option("smollm2-135m", "alias, local directory, .gguf file or hub id")
    doc: str | None = option(
        None, "documents: .json/.jsonl/.txt/SQuAD file (default: built-in SQuAD Wikipedia articles)"
    )
    generate: str | None = option(
        None,
        "instead of --doc, measure the model's own continuations of prompts: a .json/.jsonl file of objects "
        "with text or prompt (id or key names them; IFEval's input_data.jsonl works), a generations.jsonl of an "
        "earlier run (its ids are measured as they are), or synthetic:KIND (passkey, multikey, vartrack)",
    )
    max_new_tokens: int = option(256, "--generate: most tokens generated per prompt")
    min_new_tokens: int = option(0, "--generate: end-of-sequence is suppressed before this many new tokens")
    temperature: float = option(0.0, "--generate: 0 = greedy; > 0 samples (seeded from --seed and the prompt id)")
    top_p: float = option(1.0, "--generate: nucleus sampling mass (needs --temperature > 0)")
    synthetic_examples: int = option(8, "--generate synthetic:KIND: examples generated (needle depths spread evenly)")
    synthetic_length: int = option(512, "--generate synthetic:KIND: context length in tokens")
    out: str | None = option(None, "output directory")
    mode: str = option("split", "split: prefill N, score the next F; sliding: evict each token right after it")
    n_prefix: tuple[int, ...] = option((512,), "split position(s) N, comma-separated", type="ints")
    n_future: int = option(256, "future tokens F scored after each split")
    horizon: int = option(128, "sliding mode: queries scored after each source's eviction (distances 0..H-1 from it)")
    delay: int | None = option(
        None, "sliding mode: D, the queries that see a token before it is evicted (tau = i + D; default: --window)"
    )
    stride: int = option(1, "ablate every K-th source position")
    positions: tuple[int, ...] | None = option(
        None, "explicit source positions, comma-separated (overrides --stride)", type="ints"
    )
    method: str = option(
        "exact", "exact: the ablation engine; fisher: a fast second-order estimate for all tokens at once (split mode)"
    )
    samples: int = option(8, "fisher: sampled targets per position (or k of --fisher-targets topk)")
    fisher_targets: str = option(
        "sample", "fisher: sample targets from p_t, or take the top-k with exact weights (topk)"
    )
    fisher_blocks: int = option(
        1, "fisher: future blocks (distance resolution); costs blocks x samples backward passes"
    )
    layer: int | None = option(None, "ablate at this layer only (default: all layers)")
    kv_head: int | None = option(None, "ablate this KV head only (needs --layer)")
    max_tokens: int | None = option(
        None, "truncate every document to its first M tokens (split mode: at most N + F anyway)"
    )
    max_docs: int | None = option(None, "use the first M documents")
    doc_ids: tuple[str, ...] | None = option(None, "use only these document ids, comma-separated", type="strs")
    topk: int = option(10, "k of the top-k entropies")
    window: int = option(32, "SnapKV observation window (queries)")
    rep_layer: int = option(2, "early layer l0 of rep_change")
    words: bool = option(True, "tag words with spaCy (content / function classes)")
    near: int = option(32, "summary: distances d <= near are 'near'")
    far: int = option(128, "summary: distances d > far are 'far'")
    batch_size: int | None = option(None, "ablations per forward (default: from free memory)")
    device: str = option("auto", "auto, cpu or cuda")
    dtype: str = option("auto", "auto (bf16 on CUDA, fp32 on CPU), float32 or bfloat16")
    attn_implementation: str = option("sdpa", "model attention used for prefills: sdpa or eager")
    ray: str | None = option(None, RAY_HELP)
    seed: int = option(0, "random seed (recorded with the outputs)")
    progress: bool = option(True, "show progress bars")
    report: bool = option(True, "fi-measure: run fi-analyze on the result (RUN_DIR/analysis/report.html)")

    def __post_init__(self) -> None:
        if self.delay is None:  # resolved once, so run.json records the number
            object.__setattr__(self, "delay", self.window)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeasureConfig:
        """A stored config; one written before ``delay`` existed measured
        sliding mode with the source evicted right after it (delay 1)."""
        return super().from_dict({"delay": 1, **d})

    def validate(self) -> MeasureConfig:
        """Check values; raise :class:`InputError` naming the valid choices."""
        if self.doc is not None and self.generate is not None:
            raise InputError("give --doc (documents) or --generate (prompts to continue), not both")
        if self.mode not in MODES:
            raise InputError(f"--mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if not self.n_prefix or any(n < 1 for n in self.n_prefix):
            raise InputError(f"--n-prefix must be positive integers; got {self.n_prefix}")
        for name in ("n_future", "horizon", "delay", "stride", "near", "far", "topk", "window"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.method == "fisher" and self.mode != "split":
            raise InputError(
                "--method fisher estimates split-mode FI; use --mode split (or --method exact for sliding)"
            )
        if self.fisher_targets not in FISHER_TARGETS:
            raise InputError(
                f"--fisher-targets must be one of {', '.join(FISHER_TARGETS)}; got {self.fisher_targets!r}"
            )
        for name in ("samples", "fisher_blocks"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        if self.rep_layer < 0:
            raise InputError(f"--rep-layer must be >= 0; got {self.rep_layer}")
        if self.far < self.near:
            raise InputError(f"--far ({self.far}) must be >= --near ({self.near})")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.kv_head is not None and self.layer is None:
            raise InputError("--kv-head needs --layer (a head is a head of one layer)")
        if self.positions is not None and any(p < 0 for p in self.positions):
            raise InputError(f"--positions must be >= 0; got {self.positions}")
        if self.max_docs is not None and self.max_docs < 1:
            raise InputError(f"--max-docs must be >= 1; got {self.max_docs}")
        for name in ("max_new_tokens", "synthetic_examples", "synthetic_length"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InputError(
                f"--min-new-tokens must be in [0, --max-new-tokens = {self.max_new_tokens}]; got {self.min_new_tokens}"
            )
        if self.temperature < 0:
            raise InputError(f"--temperature must be >= 0 (0: greedy); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"--top-p must be in (0, 1]; got {self.top_p}")
        if self.top_p < 1 and self.temperature == 0:
            raise InputError("--top-p samples; give --temperature > 0 with it (0 is greedy)")
        check_ray(self.ray)
        return self
