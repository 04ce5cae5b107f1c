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


def test_our_layer_budgets_match_the_reference_counts():
    """Every method built from the reference's recorded arguments gives, at every layer, the number of
    entries kvpress kept (0.2 x 1500 = 300; PyramidKV flat on this input, in kvpress and in ours): a change
    of our budgets, PyramidKV's pyramid or a method's arguments fails here, without the model."""
    from forward_influence.compress import get_compressor

    ref = json.loads(KEPT.read_text())
    assert ref["versions"]["kvpress"] == "0.5.5" and set(ref["methods"]) == set(METHODS)
    n, n_layers = ref["input"]["n_tokens"], len(next(iter(ref["methods"].values()))["kept"])
    for name, m in ref["methods"].items():
        args = {k: v for k, v in m["ours"].items() if k != "name"}
        comp = get_compressor(name, **args)
        ours = [comp.layer_budget(layer, n_layers, n, comp.budget * n) for layer in range(n_layers)]
        theirs = [{bin(int(h, 16)).count("1") for h in layer} for layer in m["kept"]]
        assert all(t == {o} for o, t in zip(ours, theirs)), (name, ours[:3], theirs[:3])
