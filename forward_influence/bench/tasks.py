"""Benchmark tasks (docs/design.md §6.6): each a small class with ``prepare`` and ``score``.

Prefill tasks compress a context once and then run a query and a
teacher-forced target over the cut cache at their true positions:

:class:`Fidelity`
    A document split at ``N``: the prefix is compressed, the next ``F`` tokens
    teacher-forced; mean KL to the full-cache predictions, the change in NLL,
    and the summed KL (for the additivity check against FI).
:class:`Retrieval`
    Synthetic passkey / multi-key / variable tracking (:mod:`forward_influence.measurement.synthetic`):
    exact match of a short greedy answer and the gold answer's NLL.
:class:`ReadingQA`
    SQuAD-format articles (the article is the context; answerable questions):
    the gold answer's NLL and whether the greedy answer contains it.

The decoding task (:class:`~forward_influence.bench.ifeval.IFEval`) lives in
its own module. ``reference`` runs once per sample on the full cache;
``score`` once per method and budget on a cut cache.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as Fn

from forward_influence.compress import CompressedCache, decoding
from forward_influence.errors import InputError
from forward_influence.hf.generation import generate
from forward_influence.measurement import synthetic
from forward_influence.measurement.documents import Document, builtin_squad_path, is_squad, load_documents, tokenize
from forward_influence.measurement.kl import centred_kl
from forward_influence.measurement.textfiles import control_message, find_control, read_json


@dataclass
class Sample:
    """One benchmark item.

    Attributes
    ----------
    sample_id : str
    context : torch.Tensor
        ``(T,)`` token ids whose cache is compressed.
    query : torch.Tensor
        ``(Q,)`` ids run after the cut (may be empty).
    target : torch.Tensor
        ``(A,)`` gold ids teacher-forced after the query.
    answer : str or None
        Gold answer text (greedy answers are compared with it).
    meta : dict
        Columns copied into the results (length, depth, kind, doc_id, ...).
    """

    sample_id: str
    context: torch.Tensor
    query: torch.Tensor
    target: torch.Tensor
    answer: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def normalise_answer(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces (SQuAD's rule).

    >>> normalise_answer("  The Eiffel-Tower!")
    'eiffeltower'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


class PrefillTask:
    """Base of the prefill tasks: teacher-forced NLL of the target and,
    where there is an answer, a greedy answer of ``answer_tokens`` tokens."""

    name: ClassVar[str] = "base"
    setting: ClassVar[str] = "prefill"
    answer_tokens: int = 16

    def read(self) -> None:
        """Read the task's input files, before the model is loaded (bad input fails fast)."""

    def prepare(self, tokenizer: Any, seed: int) -> list[Sample]:
        raise NotImplementedError

    def _forced(self, cache: CompressedCache, s: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(Q + A, V)`` of query + target over ``cache`` (forked, not
        modified), and the gold target's per-token NLL ``(A',)``."""
        c = cache.fork()
        ids = torch.cat([s.query, s.target]).to(c.model.device)
        logits = c.extend(ids, all_logits=True)  # (Q + A, V)
        q = s.query.shape[0]
        pred = logits[q - 1 : -1] if q > 0 else logits[:-1]  # rows predicting target tokens
        gold = s.target if q > 0 else s.target[1:]
        nll = Fn.cross_entropy(pred.float(), gold.to(pred.device), reduction="none")
        return logits, nll

    def _greedy(self, cache: CompressedCache, s: Sample, tokenizer: Any) -> str:
        """The greedy answer after the query over ``cache`` (forked, not modified):
        transformers' ``generate`` over the cut cache, at most ``answer_tokens``
        tokens, ending at EOS or once the text holds a line break; its first line."""
        if not s.query.numel():
            return ""
        c = cache.fork()
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        ids = torch.cat(
            [s.context.to(s.query.device), s.query]
        )  # the cache holds the context: generate runs the query on
        with decoding.apply(c.model, c.compressor, None, cache=c) as run:
            out = generate(
                c.model,
                ids,
                max_new_tokens=self.answer_tokens,
                eos=eos,
                **run.generate_kwargs,
                stop_when=lambda new: "\n" in tokenizer.decode(new, skip_special_tokens=True).strip(),
            )
        return tokenizer.decode(out, skip_special_tokens=True).strip().split("\n")[0]

    def reference(self, cache: CompressedCache, s: Sample, tokenizer: Any) -> dict[str, Any]:
        logits, nll = self._forced(cache, s)
        ref = {"logits": logits, "nll": float(nll.mean())}
        if s.answer is not None:
            ref["greedy"] = self._greedy(cache, s, tokenizer)
        return ref

    def position_metrics(self, kl: torch.Tensor) -> dict[str, float]:
        """Metrics of the per-position KL ``(Q + A,)`` a task adds (none by default)."""
        return {}

    def score(self, cache: CompressedCache, s: Sample, ref: dict[str, Any], tokenizer: Any) -> dict[str, float]:
        logits, nll = self._forced(cache, s)
        kl = centred_kl(ref["logits"], logits)  # (Q + A,) per position
        out = {
            "kl": float(kl.mean()),
            "kl_sum": float(kl.sum()),
            "nll": float(nll.mean()),
            "delta_nll": float(nll.mean()) - ref["nll"],
            **self.position_metrics(kl),
        }
        if s.answer is not None:
            greedy = self._greedy(cache, s, tokenizer)
            gold = normalise_answer(s.answer)
            out["exact_match"] = float(normalise_answer(greedy).startswith(gold) and gold != "")
            out["contains"] = float(gold in normalise_answer(greedy))
            out["agrees_full"] = float(greedy == ref["greedy"])
        return out


@dataclass
class Fidelity(PrefillTask):
    """Document fidelity: prefix ``n_prefix`` compressed, the next ``n_future``
    tokens teacher-forced. Documents: any source ``fi-measure`` reads. ``kl_far``: the
    mean KL over the targets more than ``far`` after the eviction (``d_tau = t - N > far``,
    the far bucket of ``fi-measure``'s split mode); NaN when ``n_future <= far + 1``."""

    doc: str | None = None
    n_prefix: int = 1024
    n_future: int = 128
    n_samples: int | None = None
    far: int = 128
    doc_ids: tuple[str, ...] | None = None
    name: ClassVar[str] = "fidelity"
    _docs: list[Document] | None = field(default=None, init=False, repr=False)

    def read(self) -> None:
        if self._docs is None:  # every document: those too short for N + F are skipped later
            self._docs = load_documents(self.doc, doc_ids=self.doc_ids)

    def position_metrics(self, kl: torch.Tensor) -> dict[str, float]:
        far = kl[self.far + 1 :]  # row f is the target N + f: d_tau = f
        return {"kl_far": float(far.mean()) if far.numel() else float("nan")}

    def prepare(self, tokenizer: Any, seed: int) -> list[Sample]:
        need = self.n_prefix + self.n_future
        out = []
        self.read()
        for d in self._docs:
            ids = tokenize(tokenizer, d, max_tokens=need).input_ids
            if ids.shape[0] < need:
                continue
            out.append(
                Sample(
                    d.doc_id,
                    ids[: self.n_prefix],
                    ids[:0],
                    ids[self.n_prefix : need],
                    meta={"doc_id": d.doc_id, "length": self.n_prefix},
                )
            )
            if self.n_samples is not None and len(out) >= self.n_samples:
                break
        if not out:
            raise InputError(f"no document has the {need} tokens fidelity needs (--n-prefix + --n-future); lower them")
        return out


@dataclass
class Retrieval(PrefillTask):
    """Synthetic retrieval at ``lengths`` tokens and needle ``depths``,
    ``per_cell`` examples per (kind, length, depth)."""

    kinds: tuple[str, ...] = synthetic.KINDS
    lengths: tuple[int, ...] = (1024, 2048, 4096)
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    per_cell: int = 1
    name: ClassVar[str] = "retrieval"

    def prepare(self, tokenizer: Any, seed: int) -> list[Sample]:
        out = []
        for kind in self.kinds:
            for length in self.lengths:
                for depth in self.depths:
                    for i in range(self.per_cell):
                        ex = synthetic.make_example(kind, length, depth, seed * 1000 + i, tokenizer)
                        ctx = tokenizer(ex.context, add_special_tokens=True, return_tensors="pt")["input_ids"][0]
                        q = tokenizer(ex.question, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
                        a = tokenizer(ex.answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
                        out.append(
                            Sample(
                                f"{kind}-{length}-{depth}-{i}",
                                ctx,
                                q,
                                a,
                                ex.answer,
                                {"kind": kind, "length": length, "depth": depth},
                            )
                        )
        return out


@dataclass
class ReadingQA(PrefillTask):
    """Answerable SQuAD questions over their article (paragraphs joined),
    truncated to ``max_context`` tokens; only questions whose answer lies in
    the kept text."""

    path: str | None = None
    max_context: int = 1536
    questions_per_article: int = 2
    n_samples: int | None = None
    name: ClassVar[str] = "qa"
    #: per article: (title, text, [(question, answer, answer char start, question id)])
    _articles: list[tuple[str, str, list[tuple[str, str, int, str]]]] | None = field(
        default=None, init=False, repr=False
    )

    def read(self) -> None:
        if self._articles is not None:
            return
        path = Path(self.path) if self.path else builtin_squad_path()
        if not path.is_file():
            raise InputError(f"--doc {path} not found; give a SQuAD-format .json file")
        obj = read_json(path)
        if not is_squad(obj):
            raise InputError(f"{path} is not a SQuAD-format file (a JSON object with 'data' articles); give one")
        self._articles = []
        for k, art in enumerate(obj["data"]):
            text, qas = "", []
            try:
                for para in art["paragraphs"]:
                    offset = len(text)
                    text += para["context"] + "\n\n"
                    for qa in para.get("qas", []):
                        if not qa.get("is_impossible") and qa.get("answers"):
                            ans = qa["answers"][0]
                            qas.append((qa["question"], ans["text"], offset + int(ans["answer_start"]), str(qa["id"])))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise InputError(
                    f"{path}: SQuAD article {k} is malformed ({type(e).__name__}: {e}); "
                    "each paragraph needs a context and qas with question, id and answers"
                ) from None
            found = find_control(text)
            if found is not None:
                raise InputError(f"{path}: SQuAD article {k}: {control_message(found[1], f'at character {found[0]}')}")
            self._articles.append((str(art.get("title", "")), text, qas))

    def prepare(self, tokenizer: Any, seed: int) -> list[Sample]:
        import random

        self.read()
        rng = random.Random(seed)
        out = []
        for title, text, qas in self._articles:
            enc = tokenizer(
                text, return_offsets_mapping=True, add_special_tokens=True, truncation=True, max_length=self.max_context
            )
            end_char = enc["offset_mapping"][-1][1]
            ok = [q for q in qas if q[2] + len(q[1]) <= end_char]
            ctx = torch.tensor(enc["input_ids"])
            for question, answer, _, qid in rng.sample(ok, min(self.questions_per_article, len(ok))):
                q = tokenizer(f"\nQuestion: {question}\nAnswer:", add_special_tokens=False, return_tensors="pt")[
                    "input_ids"
                ][0]
                a = tokenizer(" " + answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
                out.append(Sample(qid, ctx, q, a, answer, {"doc_id": title, "length": int(ctx.shape[0])}))
            if self.n_samples is not None and len(out) >= self.n_samples:
                break
        return out[: self.n_samples] if self.n_samples else out
