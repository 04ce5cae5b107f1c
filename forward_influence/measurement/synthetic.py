"""Synthetic long-context retrieval, generated in code from a seed (RULER-style).

Three kinds, each at a target length in tokens and a needle depth (fraction
of the context before the needle):

``passkey``
    A 5-digit pass key hidden in repeated filler; asked for at the end.
``multikey``
    ``n_keys`` needles "One of the special magic {numbers|uuids} for <word>
    is: <value>." with distinct words and values; one is asked for, the
    others are distractors.
``vartrack``
    A chain ``VAR A = 12345 ... VAR B = VAR A ... VAR C = VAR B`` spread
    from the depth onwards, with as many distractor chains carrying other
    values; asked for the value of the chain's last variable.

Every example is a :class:`RetrievalExample` with the context, the question
(fed after the context, so compression cannot see it — question-agnostic, as
kvpress's pipeline does) and the gold answer, which is always in the context.

>>> ex = make_example("passkey", 600, 0.5, seed=1, tokenizer=None)
>>> ex.answer in ex.context, ex.kind
(True, 'passkey')
"""

from __future__ import annotations

import random
import string
import uuid
from dataclasses import dataclass, field
from typing import Any

KINDS = ("passkey", "multikey", "vartrack")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
WORDS = (
    "apple",
    "river",
    "candle",
    "falcon",
    "meadow",
    "copper",
    "lantern",
    "orchid",
    "glacier",
    "harbor",
    "thimble",
    "saffron",
    "quartz",
    "willow",
    "ember",
    "tundra",
    "marble",
    "violet",
    "cobalt",
    "juniper",
)


@dataclass
class RetrievalExample:
    """One generated example.

    Attributes
    ----------
    kind : str
    context, question, answer : str
        ``context + question`` is the prompt; ``answer`` the gold completion.
    length : int
        Target context length in tokens (characters / 4 without a tokenizer).
    depth : float
    meta : dict
    """

    kind: str
    context: str
    question: str
    answer: str
    length: int
    depth: float
    meta: dict[str, Any] = field(default_factory=dict)


def _n_tokens(text: str, tokenizer: Any) -> int:
    if tokenizer is None:
        return len(text) // 4
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _fill(units: list[str], inserts: dict[int, str]) -> str:
    """Filler units with ``inserts`` placed before unit index ``k``."""
    out = []
    for k, u in enumerate(units):
        if k in inserts:
            out.append(inserts[k])
        out.append(u)
    if len(units) in inserts:
        out.append(inserts[len(units)])
    return "".join(out)


def _units_for(length: int, tokenizer: Any, reserve: str) -> list[str]:
    """Enough filler units that filler + ``reserve`` is about ``length`` tokens."""
    per = max(1, _n_tokens(FILLER * 8, tokenizer) / 8)
    n = max(1, int((length - _n_tokens(reserve, tokenizer)) / per))
    return [FILLER] * n


def make_example(
    kind: str,
    length: int,
    depth: float,
    seed: int,
    tokenizer: Any = None,
    n_keys: int = 4,
    value_type: str = "number",
    hops: int = 3,
) -> RetrievalExample:
    """Generate one example (deterministic in all arguments)."""
    if kind not in KINDS:
        raise ValueError(f"unknown retrieval kind {kind!r}; valid: {', '.join(KINDS)}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    rng = random.Random(f"{kind}-{length}-{depth}-{seed}")
    if kind == "passkey":
        key = str(rng.randint(10000, 99999))
        needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
        units = _units_for(length, tokenizer, needle)
        context = "There is important information hidden in this text. Find it and memorise it. " + _fill(
            units, {int(depth * len(units)): needle}
        )
        return RetrievalExample(kind, context, "\nWhat is the pass key? The pass key is", f" {key}", length, depth)
    if kind == "multikey":
        words = rng.sample(WORDS, n_keys)
        if value_type == "uuid":
            values = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in words]
        else:
            values = [str(v) for v in rng.sample(range(1_000_000, 9_999_999), n_keys)]
        noun = "uuid" if value_type == "uuid" else "number"
        needles = [f"One of the special magic {noun}s for {w} is: {v}. " for w, v in zip(words, values)]
        target = rng.randrange(n_keys)
        units = _units_for(length, tokenizer, "".join(needles))
        slots = {int(depth * len(units)): needles[target]}
        free = [k for k in range(len(units) + 1) if k not in slots]
        for k, nd in zip(rng.sample(free, n_keys - 1), [nd for i, nd in enumerate(needles) if i != target]):
            slots[k] = nd
        question = (
            f"\nWhat is the special magic {noun} for {words[target]}? The special magic {noun} for {words[target]} is:"
        )
        return RetrievalExample(
            kind,
            _fill(units, slots),
            question,
            f" {values[target]}",
            length,
            depth,
            {"n_keys": n_keys, "value_type": value_type, "key": words[target]},
        )
    # vartrack
    names = ["".join(rng.choices(string.ascii_uppercase, k=5)) for _ in range(2 * hops)]
    values = [str(v) for v in rng.sample(range(10000, 99999), 2)]
    chains = [names[:hops], names[hops:]]
    stmts = []
    for chain, value in zip(chains, values):
        stmts.append([f"VAR {chain[0]} = {value}. "] + [f"VAR {b} = VAR {a}. " for a, b in zip(chain, chain[1:])])
    units = _units_for(length, tokenizer, "".join(s for c in stmts for s in c))
    n = len(units)
    start = int(depth * n)
    span = max(hops, (n - start) // 2)
    slots: dict[int, str] = {}
    for j, s in enumerate(stmts[0]):  # the asked chain: from the depth on, in order
        slots[min(n, start + j * max(1, span // hops))] = slots.get(min(n, start + j * max(1, span // hops)), "") + s
    free = sorted(rng.sample([k for k in range(n + 1) if k not in slots], hops))
    for k, s in zip(free, stmts[1]):  # distractor chain, in order elsewhere
        slots[k] = s
    question = f"\nWhat is the value of VAR {chains[0][-1]}? VAR {chains[0][-1]} ="
    return RetrievalExample(
        kind, _fill(units, slots), question, f" {values[0]}", length, depth, {"hops": hops, "chain": chains[0]}
    )
