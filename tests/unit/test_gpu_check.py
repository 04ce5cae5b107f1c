"""scripts/gpu_check.py on the CPU: the same code on tiny shapes, without the
packages the GPU machine lacks (tier 1; one ~30 s subprocess)."""

from __future__ import annotations

import math
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from forward_influence.runtime.devices import parse_recommendations

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
# Not on the GPU machine (issue 17), and this project's optional extras.
ABSENT = ("spacy", "gguf", "platformdirs", "accelerate", "kvpress", "lm_eval", "nltk")
BLOCK = (
    f"import sys\nfor _name in {ABSENT!r}:\n"
    "    sys.modules[_name] = None  # import raises ImportError; find_spec says absent\n"
)
RECOMMENDED = {"batch_cap", "kernel", "score_bytes", "logit_bytes", "kl_bytes", "entropy_logit_bytes"}
RUN_TIMEOUT_S = 600


def bare_env() -> dict[str, str]:
    """No PYTHONPATH: the script must find the package itself, as on the GPU machine."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def parse(stdout: str) -> dict[str, str]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert all("=" in line for line in lines), [line for line in lines if "=" not in line][:5]
    out = dict(line.split("=", 1) for line in lines)
    assert len(out) == len(lines), "a name printed twice"
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    code = (
        BLOCK
        + f"import runpy\nsys.argv = [{str(SCRIPT)!r}, '--device', 'cpu', '--tiny']\n"
        + "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=tmp_path_factory.mktemp("elsewhere"),
        env=bare_env(),
    )
    print(f"gpu_check --device cpu --tiny: {time.perf_counter() - t0:.1f} s")
    return proc, parse(proc.stdout)


def test_exits_zero(tiny_run):
    proc, _ = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_every_section_finished(tiny_run):
    sections = runpy.run_path(str(SCRIPT), run_name="gpu_check")["SECTIONS"]
    _, lines = tiny_run
    assert {name: lines.get(f"section_{name}_status") for name in sections} == {name: "ok" for name in sections}


def test_every_check_passed(tiny_run):
    _, lines = tiny_run
    verdicts = {k: v for k, v in lines.items() if k.startswith("check_") and v in ("pass", "FAIL")}
    assert len(verdicts) >= 30
    assert [k for k, v in verdicts.items() if v != "pass"] == []
    for name in (
        "engine_split_llama_flash_fp32",
        "engine_sliding_qwen2_matmul_bf16",
        "engine_layer_head_flash_fp32",
        "engine_kernels_agree_sliding_fp32",
        "compress_continuation_fi_oracle_bf16",
        "fisher_gradient_fd_fp64",
    ):
        assert verdicts.get(f"check_{name}") == "pass", name
    assert lines["summary_checks_failed"] == "0"


def test_speed_and_memory_lines_are_positive_numbers(tiny_run):
    _, lines = tiny_run
    numbers = {k: float(v) for k, v in lines.items() if k.startswith(("speed_", "mem_"))}
    assert [k for k, v in numbers.items() if not (math.isfinite(v) and v > 0)] == []
    for prefix in (
        "speed_engine_bf16_",
        "speed_engine_fp32_",
        "speed_embedded_",
        "speed_fisher_",
        "speed_compress_infokv_over_snapkv",
        "speed_decode_infokv_25pct_over_full",
        "speed_sweep_batch_cap_",
        "mem_compress_",
    ):
        assert any(k.startswith(prefix) for k in numbers), prefix


def test_recommendations_name_fields_of_the_defaults_table(tiny_run):
    _, lines = tiny_run
    rec = parse_recommendations(f"{k}={v}" for k, v in lines.items())
    assert {field for device, field in rec} == RECOMMENDED and {device for device, _ in rec} == {"cpu"}
    assert lines["info_recommendations_valid"].startswith("no")
    assert {v for k, v in lines.items() if k.startswith("target_") and not k.endswith("_goal")} <= {"met", "missed"}


@pytest.fixture
def script():
    """The script's namespace, run in this process (its settings undone after)."""
    threads, env, path = torch.get_num_threads(), dict(os.environ), list(sys.path)
    yield runpy.run_path(str(SCRIPT), run_name="gpu_check")
    torch.set_num_threads(threads)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = path


def test_a_section_past_its_deadline_prints_what_it_finished_and_the_run_goes_on(script, capsys):
    def slow(run):
        run.line("speed_first_item_s", 0.5)
        time.sleep(30)
        run.line("speed_second_item_s", 0.5)

    script["SECTIONS"]["fisher"] = slow
    code = script["main"](["--device", "cpu", "--tiny", "--sections", "fisher,naive", "--budgets", "fisher=1.5"])
    lines = parse(capsys.readouterr().out)
    assert code == 0
    assert lines["speed_first_item_s"] == "0.5" and "speed_second_item_s" not in lines
    assert lines["section_fisher_status"] == "timeout" and float(lines["section_fisher_s"]) < 10
    assert lines["section_naive_status"] == "ok"


def test_a_failed_check_or_a_crash_makes_the_exit_status_non_zero(script, capsys):
    from forward_influence.tools.checks import Check

    script["SECTIONS"]["fisher"] = lambda run: run.run_checks("demo", lambda: [Check("demo", 1.0, 0.5)])
    assert script["main"](["--device", "cpu", "--tiny", "--sections", "fisher"]) == 1
    assert parse(capsys.readouterr().out)["check_demo"] == "FAIL"
    script["SECTIONS"]["fisher"] = lambda run: 1 / 0
    assert script["main"](["--device", "cpu", "--tiny", "--sections", "fisher"]) == 1
    lines = parse(capsys.readouterr().out)
    assert lines["section_fisher_status"] == "error" and lines["section_fisher_error"].startswith("ZeroDivisionError")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_and_full_shapes_on_cpu_are_refused(script, capsys):
    assert script["main"](["--device", "cuda"]) == 2
    assert script["main"](["--device", "cpu"]) == 2
    assert script["main"](["--device", "cpu", "--tiny", "--sections", "nope"]) == 2
    assert "--tiny" in capsys.readouterr().err
