"""Method specs: a method as a runner names it, ``NAME`` or ``NAME:KEY=VALUE[:KEY=VALUE ...]``.

A spec sets hyperparameters of a registered method (``distilled:head_mix=0``, ``snapkv:window=16``);
its canonical form (:func:`spec_label`: the registered name, the pairs as written) labels the rows a
runner writes, so a lookup by name (``"distilled"``, ``"snapkv"``) finds them however the user spelled
the method. Values are typed from the field's annotation. What a run sets for every method — the
budget, the seed, a learned scorer's model file — is not settable in a spec.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any

from forward_influence.compress.base import compressor_class

#: Fields a runner sets for every method: the run's budgets, its seed, the learned scorer's file.
RUNNER_SET = frozenset({"budget", "seed", "model"})


def base_name(spec: str) -> str:
    """The registered name a method spec starts with: ``"Distilled:head_mix=0"`` -> ``"distilled"``."""
    return spec.partition(":")[0].lower().replace("-", "_")


def spec_label(spec: str) -> str:
    """The spec's canonical form, the label of its rows: the registered name, the pairs as written.

    >>> spec_label("SnapKV:window=16"), spec_label("streaming-llm")
    ('snapkv:window=16', 'streaming_llm')
    """
    name, sep, rest = spec.partition(":")
    return base_name(name) + sep + rest


def settable(cls: Any) -> dict[str, Any]:
    """The hyperparameters a spec may set on ``cls``, as their resolved annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if f.init and f.compare and f.name not in RUNNER_SET}


def method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """The registered name and the hyperparameters of a spec, each typed as its field is annotated.

    >>> method_spec("distilled:head_mix=0:window=32")
    ('distilled', {'head_mix': 0.0, 'window': 32})
    >>> method_spec("infokv:norm=none")
    ('infokv', {'norm': 'none'})
    >>> method_spec("snapkv:budget=0.5")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: method 'snapkv:budget=0.5': write NAME:KEY=VALUE with KEY one of kernel, n_sink, window ...
    """
    name, *pairs = spec.split(":")
    hints = settable(compressor_class(name))
    hyper: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in hints:
            raise ValueError(
                f"method {spec!r}: write NAME:KEY=VALUE with KEY one of {', '.join(sorted(hints))} "
                "(the budget comes from the run's budgets)"
            )
        hyper[key] = typed(spec, key, raw, hints[key])
    return base_name(spec), hyper


def typed(spec: str, key: str, raw: str, hint: Any) -> Any:
    """``raw`` as a value of the annotation ``hint`` (``int``, ``float``, ``bool``, ``str``, a union
    with None: ``none`` reads as None).

    >>> typed("s", "w", "none", int | None), typed("s", "w", "0", float), typed("s", "w", "true", bool)
    (None, 0.0, True)
    >>> typed("s", "w", "0.5", int)
    Traceback (most recent call last):
    ...
    ValueError: method 's': w='0.5', expected int
    """
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kinds = [k for k in (typing.get_args(hint) if union else (hint,)) if k is not type(None)]
    if union and type(None) in typing.get_args(hint) and raw.lower() == "none":
        return None
    for kind in kinds:
        if kind is bool:
            if raw.lower() in {"true", "false", "1", "0"}:
                return raw.lower() in {"true", "1"}
            continue
        if kind in (int, float, str):
            try:
                return kind(raw)
            except ValueError:
                continue
        if kind is Any:
            return raw
    names = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
    raise ValueError(f"method {spec!r}: {key}={raw!r}, expected {names}")


def check_spec(spec: str, seed: int = 0, model_file: Any = None) -> Any:
    """Build the method a spec names once, at budget 1, so a bad value (``distilled:head_mix=2``) is
    found before a model loads; the oracle is built with an empty FI (its hyperparameters only).
    Returns the built method; raises ValueError (or the method's InputError) on a bad spec."""
    name, hyper = method_spec(spec)
    cls = compressor_class(name)
    fi = [] if "measured_fi" in cls.inputs else None
    try:
        return cls.for_run(seed=seed, measured_fi=fi, model_file=model_file, budget=1.0, **hyper)
    except (TypeError, ValueError) as exc:  # the method's own check of a value
        raise ValueError(f"method {spec!r}: {exc}") from None
