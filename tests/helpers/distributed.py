"""Shared by tests/*/test_distributed*.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from forward_influence.store import schema
from forward_influence.store.results import MeasureResult  # noqa: E402

ray = pytest.importorskip("ray")


ROOT = Path(__file__).resolve().parents[2]


TABLES = schema.TABLES + schema.OPTIONAL_TABLES


TEXT = "The Normans gave their name to Normandy, a region in France; they were descended from Norse raiders. "


def text(i: int, repeat: int = 1) -> str:
    """Document ``i``: TEXT's words rotated by ``i`` (every document differs from its first token)."""
    words = TEXT.split()
    return (" ".join(words[i:] + words[:i]) + " ") * repeat


def write_docs(path: Path, texts: dict[str, str]) -> Path:
    path.write_text("\n".join(json.dumps({"id": k, "text": v}) for k, v in texts.items()) + "\n")
    return path


def assert_same_tables(a: MeasureResult, b: MeasureResult) -> None:
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True, obj=name)


def assert_within_recorded(a: MeasureResult, b: MeasureResult) -> float:
    """Tables equal, but for KLs and their totals, which agree by the rule the runs record
    (``reproducibility``, :mod:`forward_influence.measurement.reproducibility`); returns the floor used."""
    from forward_influence.measurement.reproducibility import fi_close, kl_close

    assert a.meta.get("reproducibility") and b.meta.get("reproducibility"), "a run did not record its reproducibility"
    floor = max(a.meta["precision_floor_max"], b.meta["precision_floor_max"])
    assert kl_close(a.influence.kl.to_numpy(), b.influence.kl.to_numpy(), floor).all()
    for col in ("fi_total", "fi_near", "fi_mid", "fi_far"):
        assert fi_close(
            a.summary[col].to_numpy(), b.summary[col].to_numpy(), a.summary.n_targets.to_numpy(), floor
        ).all(), col
    for name in ("tokens", "source_signals", "token_layers"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True, obj=name)
    return floor


@pytest.fixture(scope="module")
def cluster(cache_dir):
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "FI_CACHE_DIR": str(cache_dir)}
    t0 = time.perf_counter()
    ray.init(
        num_cpus=2,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        resources={"fi_gpu": 2},
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    print(f"Ray start-up: {time.perf_counter() - t0:.1f} s")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return write_docs(tmp_path_factory.mktemp("docs") / "docs.jsonl", {f"d{i}": text(i, 1 + i % 2) for i in range(3)})
