"""Shared by tests/*/test_notebooks*.py."""

from __future__ import annotations

from pathlib import Path

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
