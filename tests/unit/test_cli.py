"""fi-measure's flags without a model: the precision warning, --ray without Ray (the model tier:
tests/model/test_cli_model.py)."""

from __future__ import annotations

import pytest

from forward_influence.cli.measure import entry


@pytest.mark.parametrize("command", ["fi-measure", "fi-bench"])
def test_ray_flag_without_ray_says_how_to_install(command, tmp_path, monkeypatch, capsys):
    from forward_influence import config
    from forward_influence.cli import bench

    monkeypatch.setattr(config, "ray_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        (entry if command == "fi-measure" else bench.entry)(["--out", str(tmp_path / "o"), "--ray", "local:2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"{command}: error: --ray needs Ray: pip install 'forward_influence[ray]'\n"
    assert not (tmp_path / "o").exists()


def test_precision_warning_names_the_fix():
    from forward_influence.store.results import precision_warning

    meta = {"share_below_precision_floor": 0.47, "precision_floor_median": 6.1e-4, "model": {"dtype": "bfloat16"}}
    line = precision_warning(meta)
    assert "47%" in line and "6.1e-04" in line and "bfloat16" in line and "--dtype float32" in line and "\n" not in line
    assert precision_warning({**meta, "share_below_precision_floor": 0.1}) is None
    assert precision_warning({"share_below_precision_floor": None}) is None  # fisher runs, old runs
    assert precision_warning({}) is None
