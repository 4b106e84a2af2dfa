"""scripts/gpu_check.sh: its closing line counts what ran, and it exits 1 whenever a check failed
or the run checked nothing; the gpu-marked checks run only when asked for."""

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHEAP = "masks and resnet18"  # one small network's gate masks: seconds on a CPU

_spec = importlib.util.spec_from_file_location("gpu_check_summary",
                                               ROOT / "scripts" / "gpu_check_summary.py")
summary = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summary)

# What pytest writes (junit XML 2 as pytest 9 does; a -v log cut off by the time limit).
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite \
name="pytest" errors="1" failures="2" skipped="1" tests="7" time="12.5" hostname="vm">\
<testcase classname="tests.gpu.test_gpu_checks" name="test_a[x]" time="1.0" />\
<testcase classname="tests.gpu.test_gpu_checks" name="test_b" time="1.0"><failure \
message="AssertionError: 3 passed">E   AssertionError: 3 passed, 0 failed</failure></testcase>\
</testsuite></testsuites>"""
LOG = """============================= test session starts ==============================
collecting ... collected 14 items / 3 deselected / 11 selected

tests/gpu/test_gpu_checks.py::test_engine_matches_eager[resnet18-cifar32-fp32] PASSED [  9%]
tests/gpu/test_gpu_checks.py::test_engine_matches_eager[resnet18-cifar32-bf16] FAILED [ 18%]
tests/gpu/test_gpu_checks.py::test_gate_masks_match_cpu[resnet18-cifar32] PASSED [ 27%]
tests/gpu/test_gpu_checks.py::test_quick_profile_is_valid ERROR          [ 36%]
tests/gpu/test_gpu_checks.py::test_energy_source_is_nvml_counter SKIPPED (energy through \
NVML's counter is a CUDA check; the device is cpu) [ 45%]
E   AssertionError: tests/gpu/x.py::t PASSED
FAILED tests/gpu/test_gpu_checks.py::test_engine_matches_eager[resnet18-cifar32-bf16] - Asse
tests/gpu/test_gpu_checks.py::test_train_and_verify_exit_codes """


@pytest.mark.parametrize("rc,want,why", [
    (1, "3 passed, 3 failed, 1 skipped", None),
    (0, "3 passed, 3 failed, 1 skipped", None),  # pytest's code does not hide failures
    (124, "3 passed, 3 failed, 1 skipped", None),  # finished (XML written), then stopped
])
def test_counts_come_from_the_junit_xml(tmp_path, rc, want, why):
    (tmp_path / "junit.xml").write_text(JUNIT)
    assert summary.summarise(tmp_path / "junit.xml", tmp_path / "log", rc) == (want, 3, why)


def test_without_xml_the_log_counts_and_the_stop_is_a_failure(tmp_path):
    (tmp_path / "log").write_text(LOG)
    line, failed, why = summary.summarise(tmp_path / "junit.xml", tmp_path / "log", 124)
    assert (line, failed, why) == ("2 passed, 3 failed, 1 skipped", 3,
                                   "stopped at the time limit")


@pytest.mark.parametrize("rc,why", [(5, "no check selected"), (4, "pytest refused the command "
                                    "line or a setting"), (-9, "pytest exit code -9")])
def test_a_run_that_checked_nothing_fails(tmp_path, rc, why):
    (tmp_path / "junit.xml").write_text(JUNIT.replace('errors="1" failures="2" skipped="1" '
                                                      'tests="7"', 'tests="0"'))
    for junit in (tmp_path / "junit.xml", tmp_path / "none.xml"):
        assert summary.summarise(junit, tmp_path / "log", rc) == ("0 passed, 1 failed", 1, why)


def test_a_cut_xml_falls_back_to_the_log(tmp_path):
    (tmp_path / "junit.xml").write_text(JUNIT[:150])
    (tmp_path / "log").write_text(LOG)
    assert summary.summarise(tmp_path / "junit.xml", tmp_path / "log", 1)[0] == \
        "2 passed, 3 failed, 1 skipped"


def test_main_prints_one_line_and_exits_1_on_failures(tmp_path, capsys):
    (tmp_path / "junit.xml").write_text(JUNIT.replace('errors="1" failures="2"',
                                                      'errors="0" failures="0"'))
    assert summary.main([str(tmp_path / "junit.xml"), "log", "0"]) == 0
    assert capsys.readouterr().out == "6 passed, 0 failed, 1 skipped\n"
    assert summary.main([str(tmp_path / "none.xml"), "log", "5"]) == 1
    out = capsys.readouterr()
    assert out.out == "0 passed, 1 failed\n" and "no check selected" in out.err
    assert summary.main(["only-one"]) == 1
    assert capsys.readouterr().out == "0 passed, 1 failed\n"


# The script itself, on the CPU, one cheap check at a time (GPU_CHECK_K).

def run_script(tmp_path: Path, k: str, **env) -> tuple[subprocess.CompletedProcess, str]:
    """Run the script as on the device, on the CPU; returns the run and its last line."""
    full = {**os.environ, "DEV": "cpu", "QUICK": "1", "GPU_CHECK_K": k, "GPU_CHECK_ENV": "0",
            "OUT": str(tmp_path / "out"), "PYTHON": sys.executable,
            "HWBENCH_GPU_CHECK_INJECT": "", **env}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=full,
                         capture_output=True, text=True, timeout=600)
    lines = res.stdout.strip().splitlines()
    return res, lines[-1] if lines else ""


@pytest.mark.slow
def test_the_script_exits_0_with_the_closing_line_when_checks_pass(tmp_path):
    res, last = run_script(tmp_path, f"({CHEAP}) or energy_source")  # skipped on the CPU
    assert (res.returncode, last) == (0, "1 passed, 0 failed, 1 skipped"), res.stdout[-3000:]
    out = tmp_path / "out"
    assert {"gpu_check.tgz", "junit.xml", "pytest.txt", "env.txt", "summary.txt"} <= \
        {p.name for p in out.iterdir()}
    with tarfile.open(out / "gpu_check.tgz") as tar:
        names = tar.getnames()
    assert {"gpu_check/masks_resnet18-cifar32.json", "gpu_check/junit.xml"} <= set(names)


@pytest.mark.slow
def test_the_script_exits_1_when_a_check_fails(tmp_path):
    res, last = run_script(tmp_path, CHEAP, HWBENCH_GPU_CHECK_INJECT="masks")
    assert (res.returncode, last) == (1, "0 passed, 1 failed"), res.stdout[-3000:]
    assert "gate decisions differ from the CPU's" in res.stdout


@pytest.mark.slow
def test_the_script_exits_1_when_stopped_at_its_time_limit(tmp_path):
    res, last = run_script(tmp_path, CHEAP, GPU_CHECK_LIMIT="1")
    assert (res.returncode, last) == (1, "0 passed, 1 failed"), res.stdout[-3000:]
    assert "stopped at the time limit" in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("mark,inject", [(None, ""), ("gpu", ""), ("gpu", "engnie")])
def test_gpu_checks_run_only_when_asked_for(mark, inject):
    args = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
            "tests/gpu"] + (["-m", mark] if mark else [])
    env = {**os.environ, "HWBENCH_GPU_CHECK_INJECT": inject}
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    ids = [ln for ln in res.stdout.splitlines() if ln.startswith("tests/gpu/")]
    if inject:  # a misspelt injection must not quietly inject nothing
        assert res.returncode == 4 and "unknown ['engnie']" in res.stderr, res.stderr
    elif mark == "gpu":
        assert res.returncode == 0 and any("test_engine_matches_eager" in i for i in ids)
    else:
        assert res.returncode == 5 and not ids and "deselected" in res.stdout, res.stdout
