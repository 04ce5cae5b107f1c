"""Every notebook executes on small settings (tier 3), and is committed without outputs."""

from __future__ import annotations

import nbformat
import pytest
from helpers.notebooks import NOTEBOOKS  # noqa: F401, F811


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
