"""CPU (on every machine, also where a GPU is present): tools/acceptance.py in its reduced CPU form, end to end on
synthetic digits, so that the GPU acceptance command cannot rot between the sessions that have a GPU; and
its verdicts: a failed test, runs that disagree, bad input."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import acceptance  # noqa: E402  (a tool, not a module of the project: it lives in tools/)
from acceptance_parts import Parts, outcome  # noqa: E402
from acceptance_readings import estimated_seconds_per_epoch  # noqa: E402
from acceptance_targets import agreement, speed_targets  # noqa: E402
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
    assert set(training["runs"]) == {"eager", "graph", "mnist-reference"}
    for run in training["runs"].values():
        (epoch,) = run["epochs"]
        assert epoch["seconds"] > 0 and 0 <= epoch["clean_percent"] <= 100
        assert run["estimated_seconds_per_epoch"] > 0  # read back from the run's own estimate line
    assert "CUDA graphs need a CUDA device" in training["runs"]["graph"]["graph_notes"][0]

    second = parts["second_device"]  # the CPU form has no second CUDA device, and says so
    assert second["ok"] and not second["ran"] and "--device cuda:1 could not run" in second["note"]
    assert second["note"] in (out / "acceptance.md").read_text()

    suite = parts["evaluation"]["suites"]["mnist"]  # on the reference command's checkpoint
    fgsm = [a for a in suite["attacks"] if a["attack"] == "FGSM"]
    assert parts["evaluation"]["ok"] and suite["finished"] and len(fgsm) == 1 and fgsm[0]["seconds"] > 0
    assert "targets" not in report  # the speed targets are the GPU's

    tests = parts["tests"]
    assert (tests["passed"], tests["failed"], tests["skipped"]) == (1, 1, 1)
    assert len(tests["failures"]) == 1 and tests["failures"][0].endswith("test_fake.py::test_fails")
    markdown = (out / "acceptance.md").read_text()
    assert "test_fake.py::test_fails" in markdown and "| eager | 1 |" in markdown
    assert "$ " in (out / "acceptance.log").read_text()  # every command, with its output

    # A second call evaluates the checkpoints the first left under --work: eval.py reprints its finished report
    again = tmp_path / "again"
    assert acceptance.main([str(again), "--device=cpu", "--data-root", str(synthetic_mnist_root), "--workers=0",
                            "--parts", "evaluation", "--work", str(tmp_path / "work")]) == 0
    second = json.loads((again / "acceptance.json").read_text())
    assert set(second["parts"]) == {"evaluation"} and second["parts"]["evaluation"]["suites"]["mnist"]["attacks"] \
        == suite["attacks"]


def run(epochs_clean_robust):
    return {"ok": True, "epochs": [{"epoch": 2, "seconds": 1.0, "clean_percent": clean, "robust_percent": robust}
                                   for clean, robust in epochs_clean_robust]}


@pytest.mark.parametrize("graph_run, agree", [((41.0, 26.4), True), ((38.4, 26.0), False), ((40.0, 27.6), False)])
def test_eager_and_graph_runs_agree_within_one_and_a_half_points(graph_run, agree):
    """CPU: the gaps in clean and robust accuracy are checked each."""
    assert agreement({"eager": run([(40.0, 26.0)]), "graph": run([graph_run])})["agree"] is agree


def test_the_estimate_is_read_back_from_alp_pys_line():
    """CPU: the seconds per epoch of each unit that ALP.py's estimate line may use."""
    lines = ["starting ...", "estimated: 14 s per epoch (training 11 s, validation 3 s), 28 s for 2 epochs (timed "
             "on 3 training batches and 2000 validation images)"]
    assert estimated_seconds_per_epoch(lines) == 14
    assert estimated_seconds_per_epoch(["estimated: 3.5 min per epoch (training 3.0 min, ..."]) == 210
    assert estimated_seconds_per_epoch(["estimated: 11 s per epoch of training, 3 s per validation"]) is None


def test_speed_targets_are_read_off_the_figures_and_say_what_was_not_measured():
    """CPU: a made-up CUDA report; the fastest bf16 graph row of a configuration counts, a failed recording
    does not."""
    rows = [{"config": "mnist/mnist b50 PGD-40", "variant": variant, "ms_per_iteration": ms, "capture_failure": failure}
            for variant, ms, failure in (("bf16+channels_last+cudnn.benchmark, compiled + graph", 3.5, None),
                                         ("bf16+channels_last+cudnn.benchmark, graph", 9.0, None),
                                         ("bf16+channels_last+cudnn.benchmark, eager", 2.0, None),
                                         ("bf16+channels_last+cudnn.benchmark, graph", 1.0, "refused"))]
    rows.append({**rows[0], "ms_per_iteration": 0.5, "compile_failure": "inductor refused"})  # timed uncompiled
    epochs = [{"seconds": 20.0}, {"seconds": 10.0}]
    parts = {"timings": {"rows": rows},
             "training": {"runs": {"graph": {"epochs": epochs, "estimated_seconds_per_epoch": 12.0},
                                   "mnist-reference": {"epochs": [{"seconds": 9.0}, {"seconds": 5.5}]}}},
             "evaluation": {"suites": {"mnist": {"attack_seconds": 200.0, "finished": True},
                                       "cifar10": {"attack_seconds": 400.0, "finished": False}}},
             "tests": {"failed": 0}}
    targets = {t["target"].split(":")[0]: (t["measured"], t["met"]) for t in speed_targets(parts)}
    assert targets["mnist/mnist b50 PGD-40, bf16 graph"] == (3.5, True)
    assert targets["resnet32/cifar10 b128 PGD-10, bf16 graph"] == (None, None)
    assert targets["reference MNIST command"] == (5.5, True)  # the last epoch: the first pays the capture
    assert targets["ALP.py's estimate against the graph run's last epoch"] == (0.2, True)
    assert targets["default mnist suite on the 10,000 test images"] == (200.0, False)
    assert targets["default cifar10 suite on the 10,000 test images"] == (None, None)  # unfinished
    assert targets["tests failed"] == (0, True)


def test_timing_stand_in_is_mnist_sized_from_the_real_test_digits(tmp_path):
    """CPU: 60,000 training and 10,000 test images that data.py loads; needs ../shared's digits."""
    digits = ROOT.parent / "shared" / "data" / "mnist"
    if not digits.is_dir():
        pytest.skip("no ../shared/data/mnist here")
    from timing_data import has_mnist, write_mnist_timing_root
    from data import train_val_splits
    write_mnist_timing_root(str(digits), str(tmp_path))
    assert has_mnist(str(tmp_path))
    (train_x, train_y), (test_x, test_y) = train_val_splits("mnist", str(tmp_path), 0.0, None, 1)
    assert (len(train_y), len(test_y)) == (60_000, 10_000)
    assert torch.equal(train_x[:10_000], test_x) and torch.equal(train_x[50_000:], test_x)


def test_the_cpu_form_takes_mnist_root_for_its_mnist_parts(tmp_path, monkeypatch):
    """CPU, the evaluation part stood in for: the MNIST data root it gets is --mnist-root's."""
    roots = []
    monkeypatch.setattr(acceptance, "run_evaluation", lambda parts, form, device, given, *rest: roots.append(given))
    (tmp_path / "data").mkdir()
    acceptance.main([str(tmp_path / "out"), "--device=cpu", "--data-root", str(tmp_path / "data"), "--mnist-root",
                     str(tmp_path / "digits"), "--parts", "evaluation", "--work", str(tmp_path / "work")])
    assert roots == [{"cifar10": str(tmp_path / "data"), "mnist": str(tmp_path / "digits")}]


class RecordingParts:
    def __init__(self):
        self.figures = {}

    def record(self, part, figures):
        self.figures[part] = figures


@pytest.mark.parametrize("devices, notes, ok", [(2, [], True), (2, ["CUDA graph: recording it failed (...)"], False),
                                                (1, None, True)])
def test_a_second_cuda_device_trains_with_the_graph_on_cuda_1_or_the_report_says_it_could_not(
        devices, notes, ok, monkeypatch, tmp_path):
    """CPU, the device count and ALP.py's run stood in for."""
    runs = []

    def train_run(parts, name, arguments, device, data_root, offline_data, work, part="training"):
        runs.append((device, arguments, part))
        return {"ok": True, "seconds": 9.0, "epochs": [{"epoch": 1, "seconds": 8.0, "clean_percent": 97.0}],
                "graph_notes": notes}, None
    monkeypatch.setattr(acceptance.torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(acceptance, "train_run", train_run)
    parts = RecordingParts()
    acceptance.run_second_device(parts, acceptance.FORMS["cuda"], str(tmp_path), str(tmp_path))
    figures = parts.figures["second_device"]
    assert figures["ok"] == ok and figures["ran"] == (devices > 1)
    if devices > 1:
        ((device, arguments, part),) = runs
        assert device == "cuda:1" and "--cuda-graph" in arguments and part == "second_device"
    else:
        assert not runs and figures["note"] == "--device cuda:1 could not run: 1 CUDA device(s) here"


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
    parts = Parts(str(tmp_path), budget=2.0, report={"parts": {}}, shares=acceptance.SHARES)
    status, seconds = parts.run("data", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert status is None and seconds < 10
    assert "stopped at its deadline" in outcome(status, seconds)["error"]
