"""Document loading in every accepted layout, and its errors (tier 1)."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import DATA

from forward_influence.errors import InputError
from forward_influence.measurement.documents import load_documents

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.mark.parametrize(
    "name, content, want_ids",
    [
        ("a.json", [{"id": "x", "text": TEXT}, {"id": "y", "text": TEXT}], ["x", "y"]),
        ("a.json", {"id": "solo", "text": TEXT}, ["solo"]),
        ("a.json", [{"article_id": "p1", "article": TEXT, "abstract": "A."}], ["p1"]),
        ("a.json", [{"article_id": "p2", "article_text": ["One.", "Two."], "abstract_text": ["A."]}], ["p2"]),
        (
            "a.json",
            {"version": "v2.0", "data": [{"title": "T1", "paragraphs": [{"context": "P1."}, {"context": "P2."}]}]},
            ["T1"],
        ),
    ],
    ids=["array", "object", "arxiv-hf", "arxiv-original", "squad"],
)
def test_layouts(tmp_path, name, content, want_ids):
    p = tmp_path / name
    p.write_text(json.dumps(content))
    docs = load_documents(p)
    assert [d.doc_id for d in docs] == want_ids
    assert all(d.text.strip() for d in docs)


def test_squad_paragraphs_joined(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(
        json.dumps({"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "A."}, {"context": "B."}]}]})
    )
    assert load_documents(p)[0].text == "A.\n\nB."


def test_arxiv_original_sentences_joined(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"article_id": "z", "article_text": ["One.", "Two."]}) + "\n")
    assert load_documents(p)[0].text == "One. Two."


def test_jsonl_and_txt(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"id": f"d{i}", "text": TEXT}) for i in range(3)) + "\n\n")
    assert len(load_documents(p)) == 3
    assert [d.doc_id for d in load_documents(p, max_docs=2)] == ["d0", "d1"]
    assert [d.doc_id for d in load_documents(p, doc_ids=["d2"])] == ["d2"]
    t = tmp_path / "note.txt"
    t.write_text(TEXT)
    assert load_documents(t)[0].doc_id == "note"


@pytest.mark.parametrize(
    "name, raw, match",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("bad.jsonl", '{"id": "a", "text": "x"}\n{oops\n', "line 2"),
        ("empty.json", json.dumps([{"id": "e", "text": "   "}]), "empty"),
        ("none.json", "[]", "no documents"),
        ("weird.json", json.dumps([{"id": "a", "body": "x"}]), "none of the fields"),
        ("dup.json", json.dumps([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]), "duplicate"),
        ("doc.csv", "a,b", "unknown suffix"),
    ],
    ids=["malformed-json", "malformed-jsonl", "empty-doc", "no-docs", "no-text-field", "duplicate-id", "suffix"],
)
def test_bad_input_one_line(tmp_path, name, raw, match):
    p = tmp_path / name
    p.write_text(raw)
    with pytest.raises(InputError, match=match) as e:
        load_documents(p)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_ids(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_documents(tmp_path / "nope.json")
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"id": "a", "text": TEXT}]))
    with pytest.raises(InputError, match="unknown --doc-ids"):
        load_documents(p, doc_ids=["zz"])


def test_builtin_squad_articles():
    docs = load_documents(None)
    assert len(docs) == 35
    assert docs[0].doc_id == "Normans"
    assert min(len(d.text) for d in docs) > 5000


#: sha256 over (article_id NUL article NUL) of the 11 papers as first measured (the JSONL corpus the
#: README's papers figures came from); data/arxiv.json must keep them byte-identical.
PAPERS_DIGEST = "ba35bf1bfe39f62f6f8d2535009e14a465c1538404db3469e69662e4e4832dcc"


def test_papers_corpus():
    docs = load_documents(DATA / "arxiv.json")
    assert len(docs) == 11
    assert all(len(d.text) > 20000 for d in docs)
    h = hashlib.sha256()
    for d in docs:
        h.update(d.doc_id.encode() + b"\0" + d.text.encode() + b"\0")
    assert h.hexdigest() == PAPERS_DIGEST
