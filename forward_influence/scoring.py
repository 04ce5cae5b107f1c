"""A learned per-token scorer: its file format and the code that scores with it (torch-free).

A *distilled* model (``fi-distill``, :mod:`forward_influence.distill`) ranks the
candidates of one eviction (a split's prefix) by the Forward Influence they will
be judged on, from signals a compressor has at the eviction time. The file is
JSON — nothing in it is executed when it is read — and this module is the only
code that scores with it, below both the analysis and the compressors (so the
offline evaluation and the ``distilled`` compressor rank alike).

The file::

    {"format": "fi-distill scorer", "format_version": 1,
     "kind": "linear" | "trees",
     "target": "fi_far" | "fi_total",
     "features": [{"name": "entropy_in_topk", "transform": "unit_rank"}, ...],
     "linear": {"weights": [...], "bias": 0.0},                      (kind linear)
     "trees": {"base": 0.0, "scale": 1.0,                           (kind trees)
               "trees": [{"feature": [...], "threshold": [...], "missing_left": [...],
                          "left": [...], "right": [...], "value": [...]}, ...]},
     "signal_config": {"topk": 10, "window": 32, "rep_layer": 2},
     "provenance": {"language_model": {"name", "revision", ...}, "training_runs": [...], "versions": {...}, ...}}

Features are signals of the run tables (a signal name), or ``age`` (``tau - pos``,
how long ago the entry was written); the transform ``unit_rank`` maps a feature
to its rank among the unit's candidates, scaled to [0, 1] (NaN stays NaN: trees
send it the learned missing way, the linear model reads 0.5). Tree nodes with
``feature`` -1 are leaves (``value``); a row goes left when ``x <= threshold``,
and where ``x`` is NaN the node's ``missing_left`` decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forward_influence.errors import InputError

FORMAT = "fi-distill scorer"
FORMAT_VERSION = 1
KINDS = ("linear", "trees")
TRANSFORMS = ("unit_rank", "none")
#: Features that are not a run's signal: how long ago the entry was written (``tau - pos``).
AGE = "age"
#: The run settings (``MeasureConfig`` fields) that define the signals' values: a model records them
#: (``signal_config``) and the compressor computes its features with them.
SIGNAL_SETTINGS = ("topk", "window", "rep_layer")


def unit_rank(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` among its finite values scaled to [0, 1] (ties share their mean rank; NaN stays NaN).

    >>> unit_rank(np.array([0.3, np.nan, 0.1, 0.3])).tolist()
    [0.75, nan, 0.0, 0.75]
    """
    x = np.asarray(x, float)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    n = int(ok.sum())
    if n == 1:
        out[ok] = 0.5
    elif n > 1:
        from scipy.stats import rankdata

        out[ok] = (rankdata(x[ok]) - 1) / (n - 1)
    return out


def transform(features: Sequence[Mapping[str, str]], columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """A model's inputs ``(n, features)`` from one unit's raw feature columns (name -> ``(n,)``):
    each feature as its ``transform`` says (default ``unit_rank``). Training and scoring both use it."""
    cols = []
    for f in features:
        x = np.asarray(columns[f["name"]], float)
        cols.append(unit_rank(x) if f.get("transform", "unit_rank") == "unit_rank" else x)
    return np.stack(cols, axis=1) if cols else np.zeros((0, 0))


@dataclass
class Tree:
    """One regression tree as node arrays (see the module docstring)."""

    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence]) -> Tree:
        return cls(
            feature=np.asarray(d["feature"], np.int64),
            threshold=np.asarray(d["threshold"], float),
            missing_left=np.asarray(d["missing_left"], bool),
            left=np.asarray(d["left"], np.int64),
            right=np.asarray(d["right"], np.int64),
            value=np.asarray(d["value"], float),
        )

    def to_dict(self) -> dict[str, list]:
        return {
            k: getattr(self, k).tolist() for k in ("feature", "threshold", "missing_left", "left", "right", "value")
        }

    def predict(self, x: np.ndarray) -> np.ndarray:
        """``x`` ``(n, features)`` -> ``(n,)``: every row walked from the root, all rows at once."""
        node = np.zeros(len(x), np.int64)
        for _ in range(len(self.feature)):
            f = self.feature[node]
            inner = f >= 0
            if not inner.any():
                break
            rows = np.flatnonzero(inner)
            v = x[rows, f[rows]]
            go_left = np.where(np.isnan(v), self.missing_left[node[rows]], v <= self.threshold[node[rows]])
            node[rows] = np.where(go_left, self.left[node[rows]], self.right[node[rows]])
        return self.value[node]


@dataclass
class Scorer:
    """A loaded model: features, transforms and a linear or tree-ensemble scoring function."""

    kind: str
    target: str
    features: list[dict[str, str]]
    weights: np.ndarray | None = None
    bias: float = 0.0
    trees: list[Tree] = field(default_factory=list)
    base: float = 0.0
    scale: float = 1.0
    signal_config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.features]

    def transform(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's inputs ``(n, features)`` from one unit's raw feature columns (its candidates)."""
        return transform(self.features, columns)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Scores of transformed rows ``x`` ``(n, features)``; higher keeps."""
        if self.kind == "linear":
            return np.nan_to_num(x, nan=0.5) @ self.weights + self.bias
        out = np.full(len(x), self.base)
        for t in self.trees:
            out += self.scale * t.predict(x)
        return out

    def score(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores of one unit's candidates from their raw feature columns (name -> ``(n,)``)."""
        return self.predict(self.transform(columns))

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "target": self.target,
            "features": self.features,
            "signal_config": self.signal_config,
            "provenance": self.provenance,
            **self.extra,
        }
        if self.kind == "linear":
            d["linear"] = {"weights": np.asarray(self.weights, float).tolist(), "bias": float(self.bias)}
        else:
            d["trees"] = {"base": self.base, "scale": self.scale, "trees": [t.to_dict() for t in self.trees]}
        return d

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "the model") -> Scorer:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise InputError(
                f'{where} is not a distilled model (no "format": "{FORMAT}"); give a file fi-distill wrote'
            )
        if d.get("format_version") != FORMAT_VERSION:
            raise InputError(
                f"{where} has format_version {d.get('format_version')!r}, this package reads {FORMAT_VERSION}; "
                "train it again with this version's fi-distill"
            )
        try:
            kind, features = d["kind"], list(d["features"])
            if kind not in KINDS or any(f.get("transform", "unit_rank") not in TRANSFORMS for f in features):
                raise ValueError(f"kind {kind!r} or a transform is unknown")
            common = dict(
                kind=kind,
                target=str(d["target"]),
                features=features,
                signal_config=dict(d.get("signal_config") or {}),
                provenance=dict(d.get("provenance") or {}),
                extra={k: d[k] for k in ("selection", "evaluation") if k in d},
            )
            if kind == "linear":
                w = np.asarray(d["linear"]["weights"], float)
                if w.shape != (len(features),):
                    raise ValueError(f"{len(w)} weights for {len(features)} features")
                return cls(weights=w, bias=float(d["linear"]["bias"]), **common)
            tr = d["trees"]
            trees = [Tree.from_dict(t) for t in tr["trees"]]
            for t in trees:
                n = len(t.feature)
                if not all(len(getattr(t, k)) == n for k in ("threshold", "missing_left", "left", "right", "value")):
                    raise ValueError("tree node arrays of different lengths")
                if (t.feature >= len(features)).any():
                    raise ValueError("a tree splits on a feature the file does not list")
            return cls(trees=trees, base=float(tr.get("base", 0.0)), scale=float(tr.get("scale", 1.0)), **common)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                f"{where} is a damaged distilled model ({type(e).__name__}: {e}); train it again"
            ) from None


def load_scorer(
    path: str | Path, language_model: Mapping[str, Any] | None = None, features: Sequence[str] | None = None
) -> Scorer:
    """Read a model file; refuse (one line naming the fix) a missing, truncated or non-model file,
    one fit on another language model (``language_model``: name and revision to match) or on
    features this caller cannot compute (``features``: the names available)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is not a file; give a model file written by fi-distill --out")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(
            f"{path} is not readable JSON ({type(e).__name__}: {str(e).splitlines()[0]}); "
            "the file is truncated or not a model: train it again"
        ) from None
    scorer = Scorer.from_dict(d, str(path))
    fit = scorer.provenance.get("language_model") or {}
    if language_model is not None:
        for key in ("name", "revision"):
            if key in fit and key in language_model and fit[key] != language_model[key]:
                raise InputError(
                    f"{path} was fit on {key} {fit[key]!r}, not {language_model[key]!r}; "
                    "train a model on runs of this language model (fi-distill)"
                )
    if features is not None:
        missing = [f for f in scorer.feature_names if f not in set(features) | {AGE}]
        if missing:
            raise InputError(
                f"{path} needs features {missing} that are not available here; "
                "train it on runs that measured them, or measure them"
            )
    return scorer
