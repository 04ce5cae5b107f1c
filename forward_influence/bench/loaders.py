"""Loaders for the study's GPU-scale benchmarks, for users who have the files.

Each returns :class:`Problem` records (id, prompt text, gold answer, extra
fields) from a local JSON, JSONL or Parquet export of the Hugging Face
dataset; nothing is downloaded. Fields read:

``load_longreason``
    LongReason (``lz1bytedance/LongReason``, any context-length split):
    ``prompt`` if present, else ``background_story``/``background`` +
    ``final_inquiry``/``question``; ``answer`` (a choice letter); id from
    ``example_idx``/``id``.
``load_aime2024``
    AIME 2024 (e.g. ``Maxwell-Jia/AIME_2024``): ``Problem``/``problem``,
    ``Answer``/``answer`` (an integer 0-999), ``ID``/``id``.
``load_livecodebench``
    LiveCodeBench code generation (``livecodebench/code_generation_lite``):
    ``question_content`` (+ ``starter_code``), ``question_id``, and the
    ``public_test_cases`` (a JSON string) kept in ``extra["tests"]``;
    scoring a program means running it against those tests, which this
    toolkit leaves to LiveCodeBench's own harness.

The answer extractors (:func:`extract_boxed_integer`, :func:`extract_choice`)
score generations from transformers' ``generate`` inside
:meth:`forward_influence.compress.Compressor.apply`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forward_influence.errors import InputError
from forward_influence.measurement.textfiles import iter_jsonl, read_json


@dataclass
class Problem:
    problem_id: str
    prompt: str
    answer: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.json`` (array or ``{"data": [...]}``), ``.jsonl`` or ``.parquet`` file
    (text read as :mod:`forward_influence.measurement.textfiles` describes)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p} not found; give a local .json, .jsonl or .parquet export of the dataset")
    if p.suffix == ".parquet":
        from forward_influence.store.results import read_parquet

        return read_parquet(p, "re-export the dataset").to_dict("records")
    if p.suffix == ".jsonl":
        return [row for _, row in iter_jsonl(p)]
    obj = read_json(p)
    rows = obj.get("data", obj) if isinstance(obj, dict) else obj
    if not isinstance(rows, list):
        raise InputError(f"{p}: expected a list of records")
    return rows


def _first(row: dict[str, Any], *names: str) -> Any:
    for n in names:
        if row.get(n) not in (None, ""):
            return row[n]
    return None


def _need(value: Any, what: str, path: Any, i: int) -> Any:
    if value is None:
        raise InputError(f"{path}: record {i} has no {what}")
    return value


def load_longreason(path: str | Path) -> list[Problem]:
    out = []
    for i, r in enumerate(load_records(path)):
        prompt = _first(r, "prompt")
        if prompt is None:
            bg = _first(r, "background_story", "background") or ""
            q = _need(_first(r, "final_inquiry", "question", "inquiry"), "question (final_inquiry/question)", path, i)
            prompt = f"{bg}\n\n{q}".strip()
        out.append(Problem(str(_first(r, "example_idx", "id") or i), prompt, _first(r, "answer")))
    return out


def load_aime2024(path: str | Path) -> list[Problem]:
    out = []
    for i, r in enumerate(load_records(path)):
        prompt = _need(_first(r, "Problem", "problem", "question"), "problem text (Problem/problem)", path, i)
        ans = _first(r, "Answer", "answer")
        out.append(Problem(str(_first(r, "ID", "id") or i), prompt, None if ans is None else str(ans).strip()))
    return out


def load_livecodebench(path: str | Path) -> list[Problem]:
    out = []
    for i, r in enumerate(load_records(path)):
        q = _need(_first(r, "question_content", "prompt"), "question_content", path, i)
        starter = _first(r, "starter_code") or ""
        tests = _first(r, "public_test_cases")
        if isinstance(tests, str):
            try:
                tests = json.loads(tests)
            except json.JSONDecodeError:
                raise InputError(f"{path}: record {i} public_test_cases is not JSON") from None
        prompt = q + (f"\n\nStarter code:\n{starter}" if starter else "")
        out.append(
            Problem(
                str(_first(r, "question_id", "id") or i),
                prompt,
                None,
                {"tests": tests or [], "difficulty": _first(r, "difficulty"), "platform": _first(r, "platform")},
            )
        )
    return out


def extract_boxed_integer(text: str) -> str | None:
    """The last ``\\boxed{...}`` integer, else the last integer in ``text``.

    >>> extract_boxed_integer("so x = 3, and \\\\boxed{ 204 }."), extract_boxed_integer("answer 17 or 18")
    ('204', '18')
    """
    boxed = re.findall(r"\\boxed\{\s*(-?\d+)\s*\}", text)
    if boxed:
        return str(int(boxed[-1]))
    nums = re.findall(r"-?\d+", text)
    return str(int(nums[-1])) if nums else None


def extract_choice(text: str, choices: str = "ABCDE") -> str | None:
    """The last stand-alone choice letter (``(C)``, ``Answer: C``).

    >>> extract_choice("I think (B), no wait, the answer is C.")
    'C'
    """
    found = re.findall(rf"\b([{choices}])\b", text)
    return found[-1] if found else None
