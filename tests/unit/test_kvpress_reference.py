"""Agreement with NVIDIA kvpress 0.5.5 as a regression test (tier 2, no kvpress needed).

``tests/data/kvpress_0.5.5_kept.json`` holds the positions kvpress's presses
kept, per layer and KV head, on the embedded SmolLM2-135M (float32, CPU) for
the first 1,500 tokens of the first paper of ``data/arxiv.json`` at budget
0.2; ``scripts/crosscheck_kvpress.py`` wrote it under kvpress 0.5.5 and
transformers 5.2.0 (its live check printed 90/90 identical kept sets per
method there). Our compressors, with the arguments recorded beside each
method, must keep the same sets here, every (layer, KV head) of every
method, with one exception: where scores tie exactly at the top-k boundary
the two sides may choose differently (kvpress's ``topk`` picks either; ours
the more recent entry). So a set may differ only by entries whose scores in
our cut are *equal* (KNorm: 2 of 90 sets — a token repeated has the same
key norm at any position, since RoPE keeps norms). No share
threshold: the scores agree with kvpress's to ~1e-9 (1.5e-6 for expected
attention), far below the gaps at the boundary, so any other difference is a
changed score or rule, not rounding.
"""

from __future__ import annotations

import json

from helpers.kvpress_reference import KEPT, METHODS, ROOT  # noqa: F401, F811


def test_reference_file_records_its_inputs_and_versions():
    ref = json.loads(KEPT.read_text())
    assert ref["versions"]["kvpress"] == "0.5.5" and ref["versions"]["transformers"] == "5.2.0"
    assert ref["model"] == "smollm2-135m" and ref["dtype"] == "float32"
    assert ref["input"]["n_tokens"] == 1500 and set(ref["methods"]) == set(METHODS)
    for name, m in ref["methods"].items():
        assert m["ours"]["name"] == name and len(m["kept"]) == 30 and all(len(heads) == 3 for heads in m["kept"])
        counts = [bin(int(h, 16)).count("1") for layer in m["kept"] for h in layer]
        assert set(counts) == {300}, (
            name
        )  # 0.2 x 1500 (PyramidKV too: with beta 20 on this input, flat in kvpress and ours)
