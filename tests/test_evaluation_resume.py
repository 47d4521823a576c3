"""eval.py killed and started again, and under torchrun, all on the CPU: the figures are those of one
uninterrupted process. Killed runs are subprocesses, killed once they have kept a given number of units."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import eval as eval_script
from evaluation.command_line import build_parser

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
# 35 of the 40 images are classified correctly: 9 units of 4 images for PGD-100 and 9 for the sanity PGD-20.
SELECTION = ("--images", "40", "--norms", "linf", "--attacks", "pgd-100", "-b", "4")


def eval_command(checkpoint, data_root, out, *argv):
    return [sys.executable, str(ROOT / "eval.py"), str(checkpoint), "--device", "cpu", "--data-root", str(data_root),
            "--json", str(out), *map(str, argv)]


def figures(report):
    """Everything a reader takes from the report, but the seconds and the number of processes."""
    return {"clean": report["clean"], "checks": report["masking_checks"],
            "tables": [(t["worst_case"], [(a["label"], a["attacked"], a["broken"], a["robust_accuracy"],
                                           a["mean_perturbation"]) for a in t["attacks"]])
                       for t in report["threat_models"]],
            "sanity": {k: v for k, v in report["sanity"].items() if k != "seconds"}}


@pytest.fixture(scope="module")
def uninterrupted(checkpoint, data_root, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("uninterrupted") / "report.json"
    result = subprocess.run(eval_command(checkpoint, data_root, out, *SELECTION), capture_output=True, text=True,
                            timeout=300, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert 0 < report["sanity"]["broken"] and report["evaluation"]["processes"] == 1
    return figures(report)


def unit_files(units):
    return [path for path in units.glob("*.json") if path.name != "manifest.json"]


def stop_after_units(command, units, count, how):
    """Starts the command, sends it `how` once `units` holds at least `count` files: (exit status, stderr)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=ONE_THREAD)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if units.is_dir() and len(unit_files(units)) >= count:
            process.send_signal(how)
            break
        time.sleep(0.05)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


@pytest.mark.slow
def test_killed_at_several_moments_it_continues_to_the_figures_of_an_uninterrupted_run(
        checkpoint, data_root, tmp_path, uninterrupted):  # noqa: F811
    """kill -9 after the first unit, SIGTERM after 7 and Ctrl-C after 13 of the 18, then a run to the end.
    SIGTERM and Ctrl-C end in one line saying how to continue."""
    out, units = tmp_path / "report.json", tmp_path / "report.json.units"
    command = eval_command(checkpoint, data_root, out, *SELECTION)
    kept = 0
    for count, how, status in ((1, signal.SIGKILL, -signal.SIGKILL), (7, signal.SIGTERM, 143),
                               (13, signal.SIGINT, 130)):
        code, err = stop_after_units(command, units, count, how)
        assert code == status, err
        if how != signal.SIGKILL:
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
            assert re.search(r"stopped by (SIGTERM|Ctrl-C); \d+ finished units of work are kept in "
                             r".*report\.json\.units: run the same command to continue", err), err
        now = len(unit_files(units))
        assert now >= max(count, kept)  # what finished before the signal is kept
        kept = now
        assert not json.loads(out.read_text())["complete"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert f"continuing: {kept} finished units" in result.stdout
    assert figures(json.loads(out.read_text())) == uninterrupted
    assert not units.exists()  # the JSON holds everything now


def readme_torchrun_commands():
    readme = (ROOT / "README.md").read_text()
    return [line.strip() for line in readme.splitlines() if line.strip().startswith(".venv/bin/torchrun")]


@pytest.mark.slow
def test_the_readmes_torchrun_command_gives_the_figures_of_one_process(checkpoint, data_root, tmp_path,  # noqa: F811
                                                                       uninterrupted):
    """Two processes on gloo. The README's command as written, with the test's checkpoint for its
    placeholder; the flags added after it (cpu, the test data, a small selection) go through torchrun's
    parser too."""
    (command,) = readme_torchrun_commands()
    words = shlex.split(command)
    assert words[0] == ".venv/bin/torchrun" and "runs/<run>/best_robust.pt" in words
    words = [sys.executable, "-m", "torch.distributed.run", *words[1:]]
    words[words.index("runs/<run>/best_robust.pt")] = str(checkpoint)
    out = tmp_path / "report.json"
    result = subprocess.run([*words, "--device", "cpu", "--data-root", str(data_root), "--json", str(out),
                             *SELECTION], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["evaluation"]["processes"] == 2 and figures(report) == uninterrupted
    assert result.stdout.count("| ℓ∞ | leverage |") == 1  # one process prints


def test_a_finished_evaluation_is_not_redone(capsys, checkpoint, data_root, tmp_path, monkeypatch):  # noqa: F811
    argv = [str(checkpoint), "--device", "cpu", "--data-root", str(data_root), "--n", "8", "--norms", "linf",
            "--attacks", "fgsm", "--json", str(tmp_path / "report.json")]
    eval_script.main(argv)
    first = capsys.readouterr().out
    monkeypatch.setattr(eval_script, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    eval_script.main(argv)
    again = capsys.readouterr().out
    assert "holds this evaluation, complete" in again
    table = first[first.index("| ℓ∞ |"):first.index("Gradient-masking")]
    assert table.strip() in again


def test_every_flag_survives_torchruns_parser():
    """torchrun prefix-matches each --x token, the script's own too: --n is ambiguous there, --images is not."""
    from torch.distributed.run import get_args_parser
    script_flags = [o for action in build_parser()._actions for o in action.option_strings
                    if o.startswith("--") and o not in ("--help", "--n")]
    args = get_args_parser().parse_args(["--nproc_per_node=2", "eval.py", "CKPT", *script_flags])
    assert args.training_script_args == ["CKPT", *script_flags]


def test_a_second_evaluation_of_one_json_is_refused_while_the_first_runs(capsys, checkpoint, data_root,  # noqa: F811
                                                                         tmp_path):
    """CPU. Two processes on one JSON would run its units of work twice; the first one's lock (an flock, as
    a live eval.py holds it) refuses the second in one line."""
    json_path = tmp_path / "report.json"
    holder = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                               f"from training.lock import RunLock; lock = RunLock({str(tmp_path)!r}, "
                               f"name='report.json.lock'); print('locked', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    argv = [str(checkpoint), "--device", "cpu", "--data-root", str(data_root), "--n", "8", "--norms", "linf",
            "--attacks", "fgsm", "--json", str(json_path)]
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit) as stop:
            eval_script.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"{json_path} is being evaluated by a running process (PID {holder.pid})" in err
    finally:
        holder.communicate("")
    eval_script.main(argv)  # the first one gone, the evaluation runs, and leaves no lock file behind
    assert json.loads(json_path.read_text())["complete"] and not os.path.exists(f"{json_path}.lock")


@pytest.mark.parametrize("edit, says", [
    (lambda r: r["threat_models"][0]["attacks"][0].update(robust_accuracy=0.97), "robust_accuracy (FGSM): 0.97"),
    (lambda r: r.pop("masking_checks"), "cannot be printed again (KeyError 'masking_checks'"),
])
def test_a_finished_report_edited_by_hand_is_refused_in_one_line_not_reprinted(  # noqa: F811
        edit, says, capsys, checkpoint, data_root, tmp_path):
    """CPU. A figure that contradicts the counts beside it, or a part taken out: never printed as ours, never
    a traceback."""
    json_path = tmp_path / "report.json"
    argv = [str(checkpoint), "--device", "cpu", "--data-root", str(data_root), "--n", "8", "--norms", "linf",
            "--attacks", "fgsm", "--json", str(json_path)]
    eval_script.main(argv)
    report = json.loads(json_path.read_text())
    edit(report)
    json_path.write_text(json.dumps(report))
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        eval_script.main(argv)
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and says in err, err
    assert "97.00" not in out and "pass --force" in err
