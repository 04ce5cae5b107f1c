"""The names every layer agrees on, declared once (torch-free).

Measurement writes these tables, the store reads and checks them, the analysis,
figures, report and learned scorer read them. What a run measured is recorded
in its ``run.json`` (``signals``: one :class:`SignalSpec` each, written by the
measurement's signal registry, :mod:`forward_influence.measurement.signal_registry`),
so a signal added there reaches every table, rule, figure and feature list
without another edit. Runs written before ``run.json`` recorded its signals get
:data:`SIGNALS_BEFORE_RECORDING`, the signals every run of that time measured.

Distances (:data:`DISTANCE_FROM`): the near/far buckets and every claim count
from the eviction time ``tau``; ``influence.distance`` (from the source) stays
for the study's own figures (docs/design.md §2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

# ----------------------------------------------------------------- tables
#: Tables of every ``fi-measure`` run directory, and those written when computed.
TABLES = ("tokens", "influence", "summary", "source_signals")
OPTIONAL_TABLES = ("token_layers",)
#: The long influence table, in column order.
INFLUENCE_COLUMNS = (
    "doc_id",
    "mode",
    "split_pos",
    "source_pos",
    "layer",
    "kv_head",
    "target_pos",
    "distance",
    "distance_tau",
    "kl",
)
#: Forward Influence per source in ``summary.parquet`` (near/far from :data:`DISTANCE_FROM`).
FI_TARGETS = ("fi_total", "fi_near", "fi_far")
#: Columns every ``fi-measure`` run has, whatever its options and signals.
REQUIRED_COLUMNS = {
    "tokens": ("doc_id", "pos", "token_id", "token", "char_start", "char_end"),
    "influence": INFLUENCE_COLUMNS,
    "summary": (
        "doc_id",
        "mode",
        "split_pos",
        "source_pos",
        "layer",
        "kv_head",
        "fi_total",
        "fi_near",
        "fi_mid",
        "fi_far",
        "fi_max",
        "n_targets",
    ),
    "source_signals": ("doc_id", "split_pos", "pos", "tau"),
}
#: What the near/far buckets of ``summary.parquet`` count from (recorded in run.json).
DISTANCE_FROM = "tau"

# ---------------------------------------------------------------- signals
#: Signal kinds: one value per token (reads ``x[<= i]`` only), or per (split, source) (depends on ``tau``).
TOKEN, SOURCE = "token", "source"
KINDS = (TOKEN, SOURCE)


@dataclass(frozen=True)
class SignalSpec:
    """What the tables need to know of a signal.

    Attributes
    ----------
    name : str
        Its column (``tokens.parquet`` for kind ``token``, ``source_signals.parquet`` for ``source``).
    kind : {"token", "source"}
    label : str
        For figures and reports.
    rule : bool
        Shown as a selection rule (top tokens by this signal) in the selection
        tables and figures. Every signal obeys the causality rule either way.
    layers : bool
        Also has per-layer, per-KV-head values in ``token_layers.parquet``.
    color : str
        Hex colour in figures ("" for one from the palette).
    rank : int
        Where the analysis lists it (correlation tables, rules): ascending, ties
        in measurement order. The tables' columns keep the measurement's order.
    """

    name: str
    kind: str
    label: str
    rule: bool = False
    layers: bool = False
    color: str = ""
    rank: int = 100

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"signal {self.name!r}: kind must be one of {KINDS}; got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SignalSpec:
        return cls(**{k: d[k] for k in ("name", "kind", "label", "rule", "layers", "color", "rank") if k in d})


#: The signals every run measured before run.json recorded them (frozen: new signals are never added here).
SIGNALS_BEFORE_RECORDING = (
    SignalSpec("entropy_in", TOKEN, "entropy", rule=True, color="#66a61e", rank=2),
    SignalSpec("entropy_out", TOKEN, "entropy after the token", rank=4),
    SignalSpec("entropy_in_topk", TOKEN, "entropy (top-k)", rule=True, color="#1b9e77", rank=1),
    SignalSpec("entropy_out_topk", TOKEN, "entropy after the token (top-k)", rank=3),
    SignalSpec("surprisal", TOKEN, "surprisal", rank=5),
    SignalSpec("key_norm", TOKEN, "key norm", layers=True, rank=8),
    SignalSpec("rep_change", TOKEN, "representation change", layers=True, rank=9),
    SignalSpec("rep_change_layers", TOKEN, "representation change (layer mean)", rank=10),
    SignalSpec("entropy_rep", TOKEN, "entropy x representation change", rank=11),
    SignalSpec("attn_snapkv", SOURCE, "SnapKV attention", rule=True, layers=True, color="#d95f02", rank=6),
    SignalSpec("attn_h2o", SOURCE, "H2O attention", rule=True, layers=True, color="#e6ab02", rank=7),
)


def run_signals(meta: Mapping[str, Any]) -> tuple[SignalSpec, ...]:
    """The signals a run measured: its run.json ``signals``, else :data:`SIGNALS_BEFORE_RECORDING`."""
    recorded = meta.get("signals")
    if not recorded:
        return SIGNALS_BEFORE_RECORDING
    return tuple(SignalSpec.from_dict(d) for d in recorded)


def signal_names(specs: Iterable[SignalSpec], kind: str | None = None, ranked: bool = False) -> tuple[str, ...]:
    """Names of ``specs`` (of one ``kind`` when given), in measurement order or by ``rank``.

    >>> signal_names(SIGNALS_BEFORE_RECORDING, ranked=True)[:3]
    ('entropy_in_topk', 'entropy_in', 'entropy_out_topk')
    """
    chosen = [s for s in specs if kind is None or s.kind == kind]
    return tuple(s.name for s in (sorted(chosen, key=lambda s: s.rank) if ranked else chosen))


# ------------------------------------------------------------------ rules
#: Selection rules that are not a signal: the position control, seeded draws, the measured-FI oracle.
BASELINE_RULES = (
    SignalSpec("recency", TOKEN, "recency (latest)", rule=True, color="#377eb8"),
    SignalSpec("random", TOKEN, "random", rule=True, color="#7f7f7f"),
    SignalSpec("fi_oracle", TOKEN, "FI oracle", rule=True, color="#000000"),
)
#: Colours for rules that declare none (in order of appearance).
PALETTE = ("#a6761d", "#e7298a", "#7570b3", "#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854")
#: One colour per word class, the same in every figure.
CLASS_COLORS = {"content": "#1b9e77", "function": "#d95f02", "other": "#7570b3"}
WORD_CLASSES = tuple(CLASS_COLORS)


def rules(specs: Sequence[SignalSpec]) -> tuple[SignalSpec, ...]:
    """The selection rules of a run: its rule signals by rank, then the baselines.

    >>> [r.name for r in rules(SIGNALS_BEFORE_RECORDING)]
    ['entropy_in_topk', 'entropy_in', 'attn_snapkv', 'attn_h2o', 'recency', 'random', 'fi_oracle']
    """
    return tuple(sorted((s for s in specs if s.rule), key=lambda s: s.rank)) + BASELINE_RULES


def rule_colors(specs: Sequence[SignalSpec]) -> dict[str, str]:
    """Name -> colour of every rule of ``specs`` (declared, else the palette in order)."""
    free = iter(PALETTE)
    return {r.name: r.color or next(free, "#999999") for r in rules(specs)}


def rule_labels(specs: Sequence[SignalSpec]) -> dict[str, str]:
    """Name -> label of every rule of ``specs``."""
    return {r.name: r.label for r in rules(specs)}
