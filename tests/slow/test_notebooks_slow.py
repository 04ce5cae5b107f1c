"""Every notebook executes on small settings (tier 3), and is committed without outputs: the tests end to end
(subprocesses, clusters, notebooks); the fast ones and the topic's notes are in tests/unit/test_notebooks.py."""

from __future__ import annotations

import nbformat
import pytest
from helpers.notebooks import NOTEBOOKS  # noqa: F401, F811


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, smollm, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("FI_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
