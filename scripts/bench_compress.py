"""Cost of compression: prefill + scoring + cut for every method, measured in one run.

On the embedded model (or ``--model``) at N = 2,048 and 4,096 prompt tokens
(the longest paper of data/arxiv.json, truncated to N), each method's
``compress_prompt`` is timed (median of ``--repeats`` after one warm-up);
``full`` is the prefill alone; ``distilled`` (the shipped model, and each
``--distilled-model``) is compared with InfoKV. InfoKV's extra work over SnapKV is the chunked logits' top-k
entropies and one cosine per token and layer; the ratios are printed per N.
Last line: ``infokv_over_snapkv=X.XX`` (at the largest N). Runs on CUDA too (``--device cuda``; bf16 weights).

    python scripts/bench_compress.py          # ~6 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from forward_influence import load_documents, load_model, tokenize
from forward_influence.compress import compress_prompt, get_compressor, list_compressors

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT / "data" / "arxiv.json"


def prompt_ids(tok, n: int) -> torch.Tensor:
    """``n`` tokens of real text: the longest paper of data/arxiv.json."""
    docs = load_documents(PAPERS)
    toks = [tokenize(tok, d).input_ids for d in docs]
    toks.sort(key=len, reverse=True)
    ids = torch.cat(toks)[:n]
    if ids.shape[0] < n:
        raise SystemExit(f"only {ids.shape[0]} tokens of text available, need {n}")
    return ids


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--methods", default=None, help="comma-separated (default: every method but fi_oracle)")
    ap.add_argument(
        "--distilled-model",
        action="append",
        default=[],
        metavar="PATH",
        help="also time the distilled method with this model file (repeatable; row distilled:<file stem>)",
    )
    args = ap.parse_args()
    from forward_influence.runtime.host import retain_freed_memory

    retain_freed_memory()  # CPU timings as fi-measure runs (forward_influence.runtime.host)
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    model, dev = lm.model, lm.model.device
    methods = [m for m in list_compressors() if m != "fi_oracle"]
    if args.methods:
        methods = list(dict.fromkeys(["full", "snapkv", "infokv", *args.methods.split(",")]))
    print(f"{lm.name} on {dev} ({lm.model.dtype}), torch threads {torch.get_num_threads()}, budget {args.budget}")
    ratio = float("nan")
    for n in args.lengths:
        ids = prompt_ids(lm.tokenizer, n).to(dev)
        times = {}
        variants = [(m, {}) for m in methods] + [
            (f"distilled:{Path(p).stem}", {"model": p}) for p in args.distilled_model
        ]
        for name, extra in variants:
            comp = get_compressor(name.split(":")[0], budget=args.budget, **extra)
            runs = []
            for r in range(args.repeats + 1):
                sync(dev)
                t0 = time.perf_counter()
                compress_prompt(model, ids, comp)
                sync(dev)
                if r > 0:  # the first run warms up
                    runs.append(time.perf_counter() - t0)
            times[name] = statistics.median(runs)
        base = times["full"]
        print(f"\nN = {n}: prefill alone (full) {base:.2f} s")
        print(f"{'method':30s} {'seconds':>8s} {'over prefill':>13s}")
        for name, t in times.items():
            print(f"{name:30s} {t:8.2f} {t / base:12.2f}x")
        ratio = times["infokv"] / times["snapkv"]
        print(f"InfoKV / SnapKV at N = {n}: {ratio:.2f}")
        for name in (m for m in times if m.startswith("distilled")):  # prefill + scoring vs InfoKV's (target <= 1.2)
            print(f"{name} / InfoKV at N = {n}: {times[name] / times['infokv']:.2f}")
    print(f"infokv_over_snapkv={ratio:.2f}")


if __name__ == "__main__":
    main()
