"""Agreement with NVIDIA kvpress 0.5.5 as a regression test (tier 2, no kvpress needed): the tests on the embedded
SmolLM2-135M; the fast ones and the topic's notes are in tests/unit/test_kvpress_reference.py."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from forward_influence.compress import compress_prompt, get_compressor


def kept_mask(positions) -> int:
    """The file's encoding: bit ``p`` set when position ``p`` is kept."""
    return sum(1 << int(p) for p in positions)


@pytest.fixture(scope="module")
def reference_ids(smollm):
    from forward_influence import load_documents, tokenize

    ref = json.loads(KEPT.read_text())
    inp = ref["input"]
    docs = load_documents(ROOT / inp["file"], max_docs=inp["doc_index"] + 1)
    assert docs[inp["doc_index"]].doc_id == inp["doc_id"]
    ids = tokenize(smollm.tokenizer, docs[inp["doc_index"]], max_tokens=inp["max_tokens"]).input_ids
    sha = hashlib.sha256(np.ascontiguousarray(ids.cpu().numpy().astype("<i8")).tobytes()).hexdigest()
    assert int(ids.shape[0]) == inp["n_tokens"] and sha == inp["ids_sha256"], "the reference input changed"
    return ref, ids


from helpers.kvpress_reference import KEPT, METHODS, ROOT  # noqa: E402, F401, F811


@pytest.mark.parametrize("name", METHODS)
def test_our_compressors_keep_what_kvpress_kept(name, smollm, reference_ids):
    ref, ids = reference_ids
    m = ref["methods"][name]
    kwargs = {k: v for k, v in m["ours"].items() if k != "name"}
    cache, _ = compress_prompt(smollm.model, ids, get_compressor(name, **kwargs))
    assert len(cache.positions) == len(m["kept"])
    differ, untied = [], []
    for l, pos in enumerate(cache.positions):
        for h in range(pos.shape[0]):
            theirs = int(m["kept"][l][h], 16)
            if kept_mask(pos[h].tolist()) == theirs:
                continue
            differ.append((l, h))
            ours = set(pos[h].tolist())
            kvp = {p for p in range(ids.shape[0]) if theirs >> p & 1}
            swapped = torch.tensor(sorted(ours ^ kvp))
            s = cache.last_scores[l][h, swapped]
            if len(ours) != len(kvp) or not bool((s == s[0]).all()):
                untied.append((l, h))
    total = sum(map(len, m["kept"]))
    assert untied == [], (
        f"{name}: {len(untied)} of {total} (layer, KV head) kept sets differ from kvpress's beyond exact ties: "
        f"{untied[:5]}"
    )
    assert len(differ) <= (2 if name == "knorm" else 0), f"{name}: tie swaps at {differ} (recorded: knorm 2, others 0)"
