"""The model's own continuations of prompts, as documents to measure (``fi-measure --generate``).

The study compresses the cache of *long reasoning*: in decoding, the tokens a
compressor drops are the model's own generated tokens. ``--generate PROMPTS``
measures exactly those:

1. Each prompt is wrapped in the model's chat template (a user turn and the
   generation prompt; a tokenizer without a template tokenises the bare
   prompt with its special tokens).
2. transformers' ``generate`` continues it: greedy (``temperature`` 0) or
   sampled with ``temperature`` and ``top_p`` (no top-k), at most
   ``max_new_tokens``, end-of-sequence suppressed before ``min_new_tokens``.
   Every decoding setting is passed explicitly, so a checkpoint's own
   ``generation_config`` (its sampling defaults) does not enter. Sampling is
   seeded per prompt from the run's seed and the prompt id
   (:func:`prompt_seed`) inside :func:`torch.random.fork_rng`: no global
   RNG state changes, and a prompt's generation does not depend on the others.
3. The prompt + generated ids, exactly as generated (never re-tokenised), are
   the measured document (:func:`document_from_ids`): its text is their
   decoding, each token's character span comes from decoding the growing
   prefix, and ``n_prompt`` marks the boundary (``segment`` = prompt /
   generated in ``tokens.parquet``).

Prompts (:func:`load_prompts`)
------------------------------
* a ``.json`` / ``.jsonl`` file of objects with ``text`` or ``prompt``, named
  by ``id`` or ``key`` (IFEval's ``input_data.jsonl`` works as is);
* a ``generations.jsonl`` of an earlier run: its lines carry ``prompt_ids``
  and ``generated_ids``, which are measured as they are (a re-measurement in
  another mode without regenerating);
* ``synthetic:KIND``: ``fi-bench``'s generated retrieval tasks
  (:mod:`forward_influence.measurement.synthetic`; ``variable_tracking`` names
  ``vartrack``): ``synthetic_examples`` contexts of ``synthetic_length``
  tokens, needle depths spread evenly, example ``i`` seeded ``seed * 1000 + i``
  as ``fi-bench`` does, each followed by its question and a request to reason
  step by step.

``generations.jsonl`` in the output directory holds one line per prompt: id,
prompt text, prompt ids, generated ids, generated text, settings, the prompt's
seed and the model's provenance. It is rewritten (atomically) after every
prompt, so a killed run keeps its finished generations; a rerun reuses each
line whose prompt ids, settings and model match and generates the rest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forward_influence.errors import InputError
from forward_influence.hf import generation as hf_generation
from forward_influence.measurement.documents import Document, TokenizedDocument, read_objects, select_documents

FILE = "generations.jsonl"
SYNTHETIC = "synthetic:"
#: ``synthetic:NAME`` accepts fi-bench's kinds and these longer names.
KIND_ALIASES = {"variable_tracking": "vartrack", "multi_key": "multikey", "pass_key": "passkey"}
REASON = "Think step by step: explain how you find the answer in the text, then state the answer."
#: The fields of a generation that must agree for a stored one to be reused.
MODEL_KEYS = ("name", "revision", "dtype")


@dataclass(frozen=True)
class Prompt:
    """One prompt to continue.

    Attributes
    ----------
    doc_id : str
        Names the prompt and the measured document.
    text : str
        The user message.
    meta : dict
        Anything else the source carried (kind, depth, answer, key).
    stored : dict or None
        A line of an earlier run's ``generations.jsonl``: measured as it is.
    """

    doc_id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, Any] | None = None


def _synthetic_prompts(kind: str, cfg: Any, tokenizer: Any) -> list[Prompt]:
    from forward_influence.measurement import synthetic  # the generators live with fi-bench

    name = KIND_ALIASES.get(kind, kind)
    if name not in synthetic.KINDS:
        valid = ", ".join([*synthetic.KINDS, *KIND_ALIASES])
        raise InputError(f"--generate synthetic:{kind}: unknown kind; use one of {valid}")
    n = cfg.synthetic_examples
    out = []
    for i in range(n):
        depth = round((i + 0.5) / n, 4)
        try:
            ex = synthetic.make_example(name, cfg.synthetic_length, depth, cfg.seed * 1000 + i, tokenizer)
        except ValueError as e:
            raise InputError(
                f"--synthetic-length {cfg.synthetic_length} is too short for {name} examples ({e}); raise it"
            ) from None
        question = ex.question.strip().split("?")[0] + "?"
        text = f"{ex.context.strip()}\n\n{question}\n{REASON}"
        out.append(
            Prompt(
                f"{name}-{i}",
                text,
                {
                    "kind": name,
                    "length": cfg.synthetic_length,
                    "depth": depth,
                    "answer": ex.answer.strip(),
                    "source": f"{SYNTHETIC}{kind}",
                },
            )
        )
    return out


def check_source(spec: str) -> None:
    """Fail early on a prompts file that is not there or not JSON."""
    if spec.startswith(SYNTHETIC):
        return
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--generate {path}: file not found; give a .json/.jsonl of prompts or synthetic:KIND")
    if path.suffix not in (".json", ".jsonl"):
        raise InputError(
            f"--generate {path}: unknown suffix {path.suffix!r}; use .json or .jsonl (objects with text or prompt)"
        )


def _file_prompts(path: Path) -> list[Prompt]:
    check_source(str(path))
    out = []
    for i, obj in enumerate(read_objects(path)):
        if not isinstance(obj, dict):
            raise InputError(
                f"{path}: item {i} is a {type(obj).__name__}, not an object; give objects with text or prompt"
            )
        name = obj.get("id", obj.get("key", obj.get("doc_id")))
        name = str(name) if name is not None else f"prompt{i}"
        stored = obj if "generated_ids" in obj and "prompt_ids" in obj else None
        text = (
            obj.get("prompt") if stored is not None else obj.get("text", obj.get("prompt"))
        )  # a stored line's text is its generation
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{path}: item {i} ({name!r}) has no non-empty text or prompt field; give one")
        meta = (stored or {}).get("meta") or {
            k: obj[k] for k in ("key", "instruction_id_list", "kind", "depth", "answer") if k in obj
        }
        out.append(Prompt(name, text, {**meta, "source": str(path)}, stored))
    return out


def load_prompts(cfg: Any, tokenizer: Any) -> list[Prompt]:
    """The prompts of ``cfg.generate`` (see the module docstring), filtered by
    ``cfg.doc_ids`` and ``cfg.max_docs``.

    Raises
    ------
    InputError
        Missing or malformed file, an object without text, an unknown
        synthetic kind, duplicate or unknown ids.
    """
    spec = cfg.generate
    if spec.startswith(SYNTHETIC):
        prompts = _synthetic_prompts(spec[len(SYNTHETIC) :], cfg, tokenizer)
    else:
        prompts = _file_prompts(Path(spec))
    return select_documents(prompts, spec, max_docs=cfg.max_docs, doc_ids=cfg.doc_ids)


def chat_prompt_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """``(P,)`` ids of ``text`` as a user turn in the chat template, ending in
    the generation prompt; without a template, ``text`` with special tokens."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    return torch.tensor(tokenizer(text, add_special_tokens=True)["input_ids"], dtype=torch.long)


def settings(cfg: Any) -> dict[str, Any]:
    """The generation settings of a run (what must agree for a reuse)."""
    return {
        "max_new_tokens": cfg.max_new_tokens,
        "min_new_tokens": cfg.min_new_tokens,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": None if cfg.temperature == 0 else 0,
        "do_sample": cfg.temperature > 0,
        "seed": cfg.seed,
    }


def prompt_seed(seed: int, doc_id: str) -> int:
    """The sampling seed of one prompt: from the run's seed and the prompt id.

    >>> prompt_seed(0, "a") == prompt_seed(0, "a") != prompt_seed(1, "a")
    True
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big") >> 1


def stop_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the model's generation config's and the tokenizer's."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def generate_ids(model: Any, tokenizer: Any, prompt_ids: torch.Tensor, gen: dict[str, Any], seed: int) -> list[int]:
    """Continue ``prompt_ids`` ``(P,)`` with transformers' ``generate``.

    Parameters
    ----------
    gen : dict
        :func:`settings`.
    seed : int
        Seeds the sampling (:func:`prompt_seed`) inside ``fork_rng``; greedy
        decoding draws nothing.

    Returns
    -------
    list of int
        The new ids exactly as generated (an end-of-sequence id included).
    """
    eos = stop_ids(model, tokenizer)
    return hf_generation.generate(
        model,
        prompt_ids,
        max_new_tokens=gen["max_new_tokens"],
        min_new_tokens=gen["min_new_tokens"],
        do_sample=gen["do_sample"],
        temperature=gen["temperature"],
        top_p=gen["top_p"],
        eos=eos,
        pad=tokenizer.pad_token_id,
        seed=seed,
    )


def decode_offsets(tokenizer: Any, ids: list[int]) -> tuple[str, np.ndarray]:
    """The text of ``ids`` and each token's character span in it.

    Token ``k`` spans ``[e_{k-1}, e_k)`` where ``e_k`` is the length of the
    longest common prefix of ``decode(ids[:k+1])`` and the full text (a token
    that ends inside a multi-byte character gets an empty span, the token
    completing it the whole character). Special tokens get ``(0, 0)`` as a
    tokenizer's offsets give them (no word).

    Returns
    -------
    text : str
        ``decode(ids)`` (special tokens kept, no clean-up of spaces).
    offsets : numpy.ndarray
        ``(T, 2)`` int64.
    """
    dec = lambda x: tokenizer.decode(x, skip_special_tokens=False, clean_up_tokenization_spaces=False)  # noqa: E731
    text = dec(ids)
    ends = np.zeros(len(ids), dtype=np.int64)
    prev = 0
    for k in range(len(ids)):
        part = dec(ids[: k + 1])
        e = prev
        n = min(len(part), len(text))
        while e < n and part[e] == text[e]:
            e += 1
        if part[:prev] != text[:prev]:  # this prefix decodes earlier characters differently: keep them
            e = prev
        ends[k] = prev = e
    starts = np.concatenate([[0], ends[:-1]])
    offsets = np.stack([starts, ends], axis=1)
    offsets[np.isin(np.asarray(ids, dtype=np.int64), sorted(special_ids(tokenizer)))] = 0
    return text, offsets


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (named ones and added tokens marked special)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {int(i) for i, t in added.items() if getattr(t, "special", False)}


def document_from_ids(
    tokenizer: Any, doc_id: str, prompt_ids: list[int], generated_ids: list[int], meta: dict[str, Any] | None = None
) -> TokenizedDocument:
    """The measured document of a generation: ``prompt_ids + generated_ids``
    as they are, text and offsets by :func:`decode_offsets`, ``n_prompt`` the boundary."""
    ids = list(prompt_ids) + list(generated_ids)
    text, offsets = decode_offsets(tokenizer, ids)
    doc = Document(doc_id, text, {**(meta or {}), "n_prompt": len(prompt_ids), "n_generated": len(generated_ids)})
    return TokenizedDocument(
        doc,
        torch.tensor(ids, dtype=torch.long),
        offsets,
        list(tokenizer.convert_ids_to_tokens(ids)),
        n_prompt=len(prompt_ids),
    )


class GenerationStore:
    """``generations.jsonl`` of an output directory, rewritten atomically per prompt."""

    def __init__(self, out: Path | None):
        self.path = out / FILE if out is not None else None
        self.lines: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            for obj in read_objects(self.path):
                if isinstance(obj, dict) and "id" in obj:
                    self.lines[str(obj["id"])] = obj

    def find(
        self, doc_id: str, prompt_ids: list[int], gen: dict[str, Any], model: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The stored line for this prompt if its prompt ids, settings and model agree."""
        line = self.lines.get(doc_id)
        if line is None or line.get("prompt_ids") != prompt_ids or line.get("settings") != gen:
            return None
        if any((line.get("model") or {}).get(k) != model.get(k) for k in MODEL_KEYS):
            return None
        return line

    def put(self, line: dict[str, Any]) -> None:
        self.lines[line["id"]] = line
        self._write()

    def keep(self, ids: list[str]) -> None:
        """Drop the lines of prompts this run does not have (the file is the run's)."""
        if set(self.lines) - set(ids):
            self.lines = {i: self.lines[i] for i in ids if i in self.lines}
            self._write()

    def _write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{FILE}.tmp")
            tmp.write_text("".join(json.dumps(v, sort_keys=True) + "\n" for v in self.lines.values()))
            tmp.replace(self.path)


def generate_all(
    cfg: Any, lm: Any, out: Path | None, progress: Callable[[], None] | None = None
) -> tuple[list[TokenizedDocument], dict[str, Any]]:
    """Continue every prompt of ``cfg.generate`` (reusing stored generations).

    Parameters
    ----------
    cfg : MeasureConfig
    lm : LoadedModel
    out : Path or None
        Where ``generations.jsonl`` goes (None: kept in memory).
    progress : callable, optional
        Called once per prompt.

    Returns
    -------
    docs : list of TokenizedDocument
        One per prompt, in prompt order (length checks are the caller's).
    info : dict
        For ``run.json``: source, settings, chat_template, counts reused and generated.
    """
    prompts = load_prompts(cfg, lm.tokenizer)
    gen = settings(cfg)
    model = lm.provenance()
    store = GenerationStore(out)
    docs, counts = [], {"reused": 0, "from_file": 0, "generated": 0}
    for p in prompts:
        if p.stored is not None:  # a line of an earlier run's generations.jsonl: measured as it is
            line = p.stored
            if any((line.get("model") or {}).get(k) != model.get(k) for k in ("name", "revision")):
                raise InputError(
                    f"--generate: {p.doc_id!r} was generated by {line.get('model', {}).get('name')!r}; measure it "
                    "with that --model"
                )
            counts["from_file"] += 1
        else:
            ids = chat_prompt_ids(lm.tokenizer, p.text).tolist()
            line = store.find(p.doc_id, ids, gen, model)
            if line is not None:
                counts["reused"] += 1
            else:
                seed = prompt_seed(cfg.seed, p.doc_id)
                new = generate_ids(lm.model, lm.tokenizer, torch.tensor(ids), gen, seed)
                line = {
                    "id": p.doc_id,
                    "prompt": p.text,
                    "prompt_ids": ids,
                    "generated_ids": new,
                    "text": lm.tokenizer.decode(new, skip_special_tokens=True),
                    "settings": gen,
                    "prompt_seed": seed,
                    "eos_token_ids": stop_ids(lm.model, lm.tokenizer),
                    "model": model,
                    "meta": p.meta,
                }
                counts["generated"] += 1
        store.put(line)
        docs.append(
            document_from_ids(
                lm.tokenizer, p.doc_id, line["prompt_ids"], line["generated_ids"], {**p.meta, "prompt": p.text}
            )
        )
        if progress is not None:
            progress()
    store.keep([p.doc_id for p in prompts])
    # generations taken from a file were made with their own settings, not this run's flags
    made = {
        json.dumps(line.get("settings"), sort_keys=True) for line in (p.stored for p in prompts) if line is not None
    }
    return docs, {
        "source": cfg.generate,
        "settings": gen if counts["from_file"] < len(prompts) else None,
        **({"stored_settings": [json.loads(m) for m in sorted(made)]} if made else {}),
        "chat_template": bool(getattr(lm.tokenizer, "chat_template", None)),
        "file": FILE if out is not None else None,
        "n_prompts": len(prompts),
        **counts,
    }
