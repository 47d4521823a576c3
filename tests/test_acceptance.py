"""CPU (on every machine, also where a GPU is present): tools/acceptance.py in its reduced CPU form, end to end on
synthetic digits, so that the GPU acceptance command cannot rot between the sessions that have a GPU; and
its verdicts: a failed test, runs that disagree, bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import acceptance  # noqa: E402  (a tool, not a module of the project: it lives in tools/)
from pytest_counts import streamed_counts  # noqa: E402

FAKE_SUITE = """
import pytest

def test_passes():
    assert True

def test_fails():
    assert False

@pytest.mark.skip(reason="skipped on purpose")
def test_skipped():
    pass
"""


@pytest.mark.slow
def test_cpu_form_reports_every_part_and_exits_1_on_a_failed_test(synthetic_mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the parts' subprocesses: see conftest.one_thread
    (tmp_path / "test_fake.py").write_text(FAKE_SUITE)
    out = tmp_path / "out"
    status = acceptance.main([str(out), "--device=cpu", "--data-root", str(synthetic_mnist_root), "--workers=0",
                              "--tests", str(tmp_path / "test_fake.py"), "--work", str(tmp_path / "work")])
    report = json.loads((out / "acceptance.json").read_text())
    parts = report["parts"]
    assert status == 1 and report["verdict"] == "FAILED: tests"
    assert report["form"] == "cpu" and report["torch"]

    variants = {row["variant"] for row in parts["timings"]["rows"]}
    assert parts["timings"]["ok"] and {"float32, input-grad PGD", "float32, backward-every-step PGD"} <= variants
    assert all(row["ms_per_iteration"] > 0 and row["pgd_steps"] == 2 for row in parts["timings"]["rows"])
    # the reduced form's rows say the steps that ran, not the reference configuration's PGD-40
    assert {row["config"] for row in parts["timings"]["rows"]} == {"mnist/mnist b50 PGD-2"}
    assert "PGD-40" not in (out / "acceptance.md").read_text()

    training = parts["training"]
    assert training["ok"] and training["agree"] and training["gap_points"] == {"clean_percent": 0.0,
                                                                               "robust_percent": 0.0}
    for run in training["runs"].values():
        (epoch,) = run["epochs"]
        assert epoch["seconds"] > 0 and 0 <= epoch["clean_percent"] <= 100
    assert "CUDA graphs need a CUDA device" in training["runs"]["graph"]["graph_notes"][0]

    fgsm = [a for a in parts["evaluation"]["attacks"] if a["attack"] == "FGSM"]
    assert parts["evaluation"]["ok"] and len(fgsm) == 1 and fgsm[0]["seconds"] > 0

    tests = parts["tests"]
    assert (tests["passed"], tests["failed"], tests["skipped"]) == (1, 1, 1)
    assert len(tests["failures"]) == 1 and tests["failures"][0].endswith("test_fake.py::test_fails")
    markdown = (out / "acceptance.md").read_text()
    assert "test_fake.py::test_fails" in markdown and "| eager | 1 |" in markdown
    assert "$ " in (out / "acceptance.log").read_text()  # every command, with its output


def run(epochs_clean_robust):
    return {"ok": True, "epochs": [{"epoch": 2, "seconds": 1.0, "clean_percent": clean, "robust_percent": robust}
                                   for clean, robust in epochs_clean_robust]}


@pytest.mark.parametrize("graph_run, agree", [((41.0, 26.4), True), ((38.4, 26.0), False), ((40.0, 27.6), False)])
def test_eager_and_graph_runs_agree_within_one_and_a_half_points(graph_run, agree):
    """CPU: the gaps in clean and robust accuracy are checked each."""
    assert acceptance.agreement({"eager": run([(40.0, 26.0)]), "graph": run([graph_run])})["agree"] is agree


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    """CPU."""
    with pytest.raises(SystemExit) as stop:
        acceptance.main([str(tmp_path / "out"), "--data-root", str(tmp_path / "absent")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_the_command_runs_as_the_readme_writes_it_from_the_repository_root(tmp_path):
    """CPU: `python tools/acceptance.py ...` finds the project's modules and scripts one folder up (a bad
    --data-root, so that it stops after its checks)."""
    result = subprocess.run([sys.executable, "tools/acceptance.py", str(tmp_path / "out"), "--data-root",
                             str(tmp_path / "absent")], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and result.stderr.strip() == f"acceptance.py: error: --data-root: no folder "\
                                                              f"{tmp_path / 'absent'}", result.stderr
    assert acceptance.ROOT == str(ROOT) and os.path.isfile(os.path.join(acceptance.ROOT, "eval.py"))


def test_test_counts_survive_a_stop_before_the_junit_xml():
    """CPU: pytest -v's progress lines, plain and under xdist, when pytest was stopped before writing XML."""
    plain = ("tests/a.py::test_ok PASSED    [ 25%]\ntests/a.py::test_bad[x y] FAILED    [ 50%]\n"
             "tests/a.py::test_off SKIPPED (not here)    [ 75%]\n")
    xdist = "[gw0] [ 25%] PASSED tests/a.py::test_ok \n[gw1] [ 50%] ERROR tests/a.py::test_bad[x y] \n"
    assert streamed_counts(plain) == {"passed": 1, "failed": 1, "skipped": 1,
                                                 "failures": ["tests/a.py::test_bad[x y]"]}
    assert streamed_counts(xdist) == {"passed": 1, "failed": 1, "skipped": 0,
                                                 "failures": ["tests/a.py::test_bad[x y]"]}


def test_a_part_past_its_deadline_is_stopped_and_reported(tmp_path):
    """CPU: a 2 s budget; the part's process sleeps for 60 s."""
    parts = acceptance.Parts(str(tmp_path), budget=2.0, report={"parts": {}})
    status, seconds = parts.run("data", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert status is None and seconds < 10
    assert "stopped at its deadline" in acceptance.outcome(status, seconds)["error"]
