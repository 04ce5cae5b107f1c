"""fi-measure and fi-bench on a local Ray cluster (issue 19): the tests end to end (subprocesses, clusters, notebooks);
the fast ones and the topic's notes are in tests/unit/test_distributed.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from conftest import TinySource  # noqa: E402
from helpers.distributed import ROOT, TABLES, TEXT, assert_same_tables, cluster, docs, ray, text, write_docs  # noqa: F401, F811

from forward_influence import MeasureConfig
from forward_influence.measurement.run import measure  # noqa: E402
from forward_influence.store.results import MeasureResult  # noqa: E402


def test_driver_killed_and_rerun_resumes(cluster, tmp_path):
    docs = write_docs(tmp_path / "docs.jsonl", {f"d{i}": text(i, 1 + i % 2) for i in range(4)})
    out = tmp_path / "run"
    kw = dict(
        doc=str(docs),
        out=str(out),
        words=False,
        progress=False,
        report=False,
        batch_size=4,
        n_prefix=(48,),
        n_future=16,
        window=8,
        stride=3,
    )
    driver = (
        "from conftest import TinySource\n"
        "from forward_influence import MeasureConfig, measure\n"
        "from forward_influence.execution.cluster import ClusterSpec\n"
        f"measure(MeasureConfig(**{kw!r}), source=TinySource(delay=0.3),\n"
        f"        cluster=ClusterSpec({cluster!r}, workers=2, gpu_resource='fi_gpu', "
        f"threads={torch.get_num_threads()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", driver], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = out / ".parts" / "00000" / "meta.json"
    deadline = time.time() + 600
    while not part.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert part.exists(), err.decode()[-2000:]
    assert not (out / "tokens.parquet").exists(), "killed before the end"
    r = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    got = MeasureResult.load(out)
    assert got.meta["per_document"][0].get("resumed") and got.meta["execution"]["backend"] == "ray"
    assert_same_tables(measure(MeasureConfig(**{**kw, "out": None}), source=TinySource()), got)
