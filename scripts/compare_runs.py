#!/usr/bin/env python
"""Are two runs' tables the same? The behaviour-unchanged check of a refactor.

Compares every parquet table under two run directories (``fi-measure`` or
``fi-bench`` output, the analysis included) and their JSON files:

* the same tables, columns and rows (in order);
* numbers equal to ``--rtol`` (default 1e-6; ``--atol`` 1e-12 for values near zero), NaN equal to NaN;
* everything else exactly, except what says *when* or *where* a run happened
  (timings, dates, paths, versions, git sha, host and thread settings: :data:`VOLATILE`).

Usage::

    python scripts/compare_runs.py runs/demo-before runs/demo-after [--rtol 1e-6] [--recorded]

``--recorded``: runs made with other thread counts or batch sizes (a Ray run against a single
process) agree to rounding, not bitwise: KL cells (``influence.kl``) and their totals (``summary``'s
``fi_*``) are compared by the rule the runs' ``run.json`` records (``reproducibility``:
``|sqrt(KL_a) - sqrt(KL_b)| <= C sqrt(precision floor)``, :mod:`forward_influence.measurement.reproducibility`),
everything else at ``--rtol``.

Prints one line per difference, then ``equal=True|False`` (exit 0 when equal, 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forward_influence.measurement.reproducibility import fi_close, kl_close

# JSON keys (at any depth) that record when/where a run happened, not what it computed
VOLATILE = (
    "seconds",
    "time",
    "date",
    "created",
    "started",
    "finished",
    "elapsed",
    "wall",
    "path",
    "dir",
    "out",
    "version",
    "git",
    "sha",
    "host",
    "threads",
    "runtime",
    "heap",
    "pid",
    "library",
    "python",
    "platform",
    "cache",
)

VOLATILE_KEYS = {
    "run_id",
    "written",
    "source",
}  # exact keys: a run's id, when it was written, where the weights were read


def volatile(key: str) -> bool:
    k = key.lower()
    return k in VOLATILE_KEYS or any(v in k for v in VOLATILE)


def compare_json(a: Any, b: Any, where: str, rtol: float, atol: float, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if volatile(str(k)):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'second' if k not in a else 'first'}")
            else:
                compare_json(a[k], b[k], f"{where}.{k}", rtol, atol, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: length {len(a)} != {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            compare_json(x, y, f"{where}[{i}]", rtol, atol, out)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if not (math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or (a != a and b != b)):
            out.append(f"{where}: {a!r} != {b!r}")
    elif a != b:
        out.append(f"{where}: {str(a)[:80]!r} != {str(b)[:80]!r}")


def compare_table(
    a: pd.DataFrame, b: pd.DataFrame, name: str, rtol: float, atol: float, out: list[str], floor: float | None = None
) -> None:
    if list(a.columns) != list(b.columns):
        out.append(f"{name}: columns differ: {sorted(set(a.columns) ^ set(b.columns))}")
        return
    if len(a) != len(b):
        out.append(f"{name}: {len(a)} rows != {len(b)}")
        return
    for c in a.columns:
        x, y = a[c], b[c]
        if volatile(c):
            continue
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(x):
            xv, yv = x.to_numpy(dtype=float), y.to_numpy(dtype=float)
            close = np.isclose(xv, yv, rtol=rtol, atol=atol)
            if floor is not None and name.endswith("influence.parquet") and c == "kl":
                close = kl_close(xv, yv, floor)
            elif floor is not None and name.endswith("summary.parquet") and c.startswith("fi_") and "n_targets" in a:
                close = close | fi_close(xv, yv, a["n_targets"].to_numpy(float), floor)
            bad = ~(close | (np.isnan(xv) & np.isnan(yv)))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                out.append(f"{name}.{c}: {int(bad.sum())} of {len(xv)} differ (first row {i}: {xv[i]!r} vs {yv[i]!r})")
        else:
            xs, ys = np.array([str(v) for v in x], dtype=object), np.array([str(v) for v in y], dtype=object)
            if (xs != ys).any():
                i = int(np.flatnonzero(xs != ys)[0])
                out.append(
                    f"{name}.{c}: {int((xs != ys).sum())} values differ (first row {i}: {xs[i][:60]!r} vs "
                    f"{ys[i][:60]!r})"
                )


def compare_runs(a: Path, b: Path, rtol: float = 1e-6, atol: float = 1e-12, floor: float | None = None) -> list[str]:
    """Differences between run directories ``a`` and ``b`` (empty: equal); with ``floor``, KLs and
    their totals compared by the recorded rule at that precision floor."""
    out: list[str] = []
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.suffix in (".parquet", ".json")}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.suffix in (".parquet", ".json")}
    for f in sorted(files_a ^ files_b):
        out.append(f"{f}: only in {'first' if f in files_a else 'second'}")
    for f in sorted(files_a & files_b):
        if f.suffix == ".parquet":
            compare_table(pd.read_parquet(a / f), pd.read_parquet(b / f), str(f), rtol, atol, out, floor)
        else:
            compare_json(json.loads((a / f).read_text()), json.loads((b / f).read_text()), str(f), rtol, atol, out)
    if not files_a & files_b:
        out.append("no tables in common")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--atol", type=float, default=1e-12)
    ap.add_argument("--recorded", action="store_true", help="use the tolerance the runs' run.json records, if larger")
    args = ap.parse_args(argv)
    for d in (args.first, args.second):
        if not d.is_dir():
            print(f"compare_runs: {d} is not a directory; pass two run directories", file=sys.stderr)
            return 2
    rtol, floor = args.rtol, None
    if args.recorded:
        metas = [
            json.loads((d / "run.json").read_text()) for d in (args.first, args.second) if (d / "run.json").is_file()
        ]
        if len(metas) < 2 or not all(m.get("reproducibility") for m in metas):
            print("compare_runs: --recorded needs two runs whose run.json records reproducibility", file=sys.stderr)
            return 2
        floor = max(m["precision_floor_max"] for m in metas)
    diffs = compare_runs(args.first, args.second, rtol, args.atol, floor)
    n = len(list(args.first.rglob("*.parquet")))
    for d in diffs:
        print(d)
    rule = f" recorded rule at precision floor {floor:.2e}" if floor is not None else ""
    print(f"tables={n} differences={len(diffs)} rtol={rtol:g}{rule}")
    print(f"equal={not diffs}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
