"""``fi-bench``: compressors side by side, and validated against Forward Influence (docs/design.md §6.6).

>>> from forward_influence.bench import BenchConfig, run_bench            # doctest: +SKIP
>>> cfg = BenchConfig(task="fidelity", budgets=(0.2, 0.4), n_samples=4, out="runs/bench")
>>> results = run_bench(cfg)  # doctest: +SKIP
"""

from forward_influence.bench.config import BenchConfig
from forward_influence.bench.runner import run_bench
from forward_influence.bench.tasks import Fidelity, ReadingQA, Retrieval, Sample

__all__ = ["BenchConfig", "Fidelity", "ReadingQA", "Retrieval", "Sample", "run_bench"]
