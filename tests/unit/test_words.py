"""Word alignment invariants and the real spaCy model (tiers 1-2)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forward_influence.measurement.words import WORD_CLASS, align, tag_tokens, tag_words


def spans(text, pieces):
    """Character spans of consecutive ``pieces`` that concatenate to ``text``."""
    out, pos = [], 0
    for p in pieces:
        assert text[pos : pos + len(p)] == p
        out.append((pos, pos + len(p)))
        pos += len(p)
    assert pos == len(text)
    return np.array(out)


CASES = {
    "multi-subword": ("An unbelievably long day", ["An", " un", "believ", "ably", " long", " day"]),
    "punctuation": ("Hello, world.", ["Hello", ",", " world", "."]),
    "digits": ("in 2023 we", ["in", " ", "2", "0", "2", "3", " we"]),
    "hyphenation": ("state-of-the-art", ["state", "-", "of", "-", "the", "-", "art"]),
    "non-ascii": ("café naïve ümlaut", ["caf", "é", " na", "ïve", " ü", "mlaut"]),
    "whitespace": ("One.\n\nTwo", ["One", ".", "\n\n", "Two"]),
}


@pytest.mark.parametrize("name", CASES)
def test_alignment_invariants(name):
    text, pieces = CASES[name]
    off = spans(text, pieces)
    words = tag_words(text)
    idx = align(text, off, words)
    assert idx.shape == (len(pieces),)
    for (s, _e), w, piece in zip(off, idx, pieces):
        if piece.strip() == "":
            assert w == -1, "whitespace-only tokens map to no word"
            continue
        assert w >= 0, f"token {piece!r} has a word"
        row = words.iloc[w]
        first = s + len(piece) - len(piece.lstrip())
        assert row.char_start <= first < row.char_end, "the word holds the token's first non-space char"
    assert (np.diff(idx[idx >= 0]) >= 0).all(), "word indices never go back"


def test_word_split_across_tokens_shared():
    text, pieces = CASES["multi-subword"]
    df = tag_tokens(text, spans(text, pieces))
    assert df.word_idx.tolist()[1:4] == [1, 1, 1]
    assert df.word.tolist()[1:4] == ["unbelievably"] * 3
    assert df.is_word_start.tolist() == [True, True, False, False, True, True]


def test_digits_and_punctuation_classes():
    text, pieces = CASES["digits"]
    df = tag_tokens(text, spans(text, pieces))
    assert set(df.word[2:6]) == {"2023"} and set(df.upos[2:6]) == {"NUM"}
    assert df.word_class[1] == "other" and pd.isna(df.word[1])
    text, pieces = CASES["punctuation"]
    df = tag_tokens(text, spans(text, pieces))
    assert df.upos.tolist() == ["INTJ", "PUNCT", "NOUN", "PUNCT"]
    assert df.word_class.tolist() == ["other", "other", "content", "other"]


def test_special_tokens_have_no_word():
    text = "A cat."
    off = np.array([(0, 0), (0, 1), (1, 5), (5, 6)])  # a BOS with an empty span first
    df = tag_tokens(text, off)
    assert pd.isna(df.word_idx[0]) and df.word_class[0] == "other" and not df.is_word_start[0]
    assert df.word.tolist()[1:] == ["A", "cat", "."]


def test_real_spacy_known_tags():
    words = tag_words("The cat sat on the mat and quickly ate two fish.")
    got = dict(zip(words.word, zip(words.upos, words.tag)))
    assert got["The"] == ("DET", "DT")
    assert got["cat"][0] == "NOUN"
    assert got["sat"] == ("VERB", "VBD")
    assert got["on"] == ("ADP", "IN")
    assert got["and"] == ("CCONJ", "CC")
    assert got["quickly"][0] == "ADV"
    assert got["two"][0] == "NUM"


def test_finite_verbs_and_classes():
    text = "She writes papers while running."
    words = tag_words(text)
    off = np.array([(r.char_start, r.char_end) for r in words.itertuples()])
    df = tag_tokens(text, off)
    by = dict(zip(df.word, zip(df.word_class, df.finite_verb)))
    assert by["writes"] == ("content", True)
    assert by["running"] == ("content", False)
    assert by["She"][0] == "function" and by["while"][0] == "function"


def test_mapping_table_covers_design():
    assert {u for u, c in WORD_CLASS.items() if c == "content"} == {"NOUN", "PROPN", "ADJ", "VERB", "ADV", "NUM"}
    assert {u for u, c in WORD_CLASS.items() if c == "function"} == {
        "DET",
        "ADP",
        "CCONJ",
        "SCONJ",
        "PRON",
        "AUX",
        "PART",
    }


def test_long_text_chunked_like_whole():
    text = "\n".join(f"Line {i} has a noun and a verb." for i in range(300))
    a = tag_words(text, chunk_chars=500)
    b = tag_words(text, chunk_chars=10**6)
    pd.testing.assert_frame_equal(a[["word", "char_start", "char_end"]], b[["word", "char_start", "char_end"]])
