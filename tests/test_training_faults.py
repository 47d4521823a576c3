"""What a careless or unlucky user does to a training run, and the one line (or the right behaviour) each
gets: crafted checkpoints, a lost args.json or best_*.pt, one-class models, Ctrl-C and SIGTERM, odd flags.
Everything runs on the CPU; runs use the synthetic digits and a one-step validation attack."""
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zipfile

import pytest
import torch

import ALP
import training.alp
import training.lock
import training.loop
from training.flags import parse_args
from training.records import curves_figure
from checkpoints import CheckpointError, load_checkpoint
from optimization import own_options
from conftest import QUICK, ROOT, run_folder_of
from utils import write_atomically

DEVICE = "cpu"  # every run here trains on the CPU (QUICK says --device=cpu)


def quick_run(root, out, *extra):
    return [*QUICK, "--subset=100", "--data-root", str(root), "--out", str(out), *extra]


def stops_in_one_line(argv, capsys, code=2):
    with pytest.raises(SystemExit) as stop:
        ALP.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == code and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- crafted checkpoints: bounded work ------------------------------------------------------------------------

def test_a_checkpoint_of_shared_references_is_refused_at_once_not_walked_for_ever(tmp_path):
    nested = [torch.zeros(1)]
    for _ in range(60):  # 60 levels, each referring twice to the one below: 2^60 paths, a small file
        nested = [nested, nested]
    path = tmp_path / "crafted.pt"
    torch.save({"model": {}, "meta": {}, "payload": nested, "digest": "0" * 64}, path)
    with pytest.raises(CheckpointError, match="is damaged .*nests deeper than|holds more than"):
        load_checkpoint(str(path))


def torch_file_holding(path, payload_pickle, **entries):
    """A torch.save file of `entries` plus "payload", whose pickle is `payload_pickle` (raw opcodes): an object
    too deep for the pickler (Python 3.12 limits the C pickler's depth whatever sys.setrecursionlimit says)
    is written as the bytes its unpickler reads."""
    marker = "PAYLOAD-TO-REPLACE"
    torch.save({**entries, "payload": marker}, path)
    pickled_marker = b"X" + struct.pack("<I", len(marker)) + marker.encode()  # BINUNICODE, as protocol 2 writes
    with zipfile.ZipFile(path) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records:
            if name.endswith("/data.pkl"):
                assert data.count(pickled_marker) == 1
                data = data.replace(pickled_marker, payload_pickle)
            archive.writestr(name, data)


def test_a_checkpoint_nested_thousands_deep_is_refused_without_a_recursion_error(tmp_path):
    depth = 5000
    nested_lists = b"]" * (depth + 1) + b"a" * depth  # [[[...[]...]]]: EMPTY_LIST each, then APPEND each
    torch_file_holding(tmp_path / "deep.pt", nested_lists, model={}, meta={}, digest="0" * 64)
    payload = torch.load(tmp_path / "deep.pt")["payload"]
    for _ in range(depth):
        (payload,) = payload
    assert payload == []  # the fixture is what it claims: 5,000 levels
    with pytest.raises(CheckpointError, match="nests deeper than"):
        load_checkpoint(str(tmp_path / "deep.pt"))


# --- resume ----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_without_args_json_checks_the_arguments_against_last_pt(finished_run, capsys):
    argv, run_dir = finished_run
    os.remove(os.path.join(run_dir, "args.json"))
    err = stops_in_one_line([*argv, "--resume", "-beta1=0.5"], capsys)
    assert "--beta1 0.5 (the run has 0.9)" in err


@pytest.mark.slow
def test_a_deleted_best_checkpoint_is_written_anew_and_the_last_line_names_only_files_there(
        synthetic_mnist_root, tmp_path, cheap_validation, monkeypatch, capsys):
    argv = quick_run(synthetic_mnist_root, tmp_path / "runs", "--epochs=2")
    monkeypatch.setattr(training.loop, "validate", lambda *args, **kwargs: (0.5, 0.3, torch.tensor([10] * 10)))
    stop_at_step(monkeypatch, 3)  # epoch 2, batch 1
    with pytest.raises(SystemExit):
        ALP.main(argv)
    run_dir = run_folder_of(argv)
    assert load_checkpoint(os.path.join(run_dir, "best_robust.pt"))["robust_accuracy"] == 0.3
    os.remove(os.path.join(run_dir, "best_robust.pt"))
    monkeypatch.setattr(ALP, "train_step", training.alp.train_step)
    monkeypatch.setattr(training.loop, "validate", lambda *args, **kwargs: (0.45, 0.25, torch.tensor([10] * 10)))
    capsys.readouterr()
    ALP.main([*argv, "--resume"])
    out = capsys.readouterr().out
    assert "best_robust.pt is gone: the next validated epoch writes it anew (it held 30.00%)" in out
    assert load_checkpoint(os.path.join(run_dir, "best_robust.pt"))["robust_accuracy"] == 0.25
    assert "best clean 50.00% (best_clean.pt), best robust 25.00% (best_robust.pt)" in out


def stop_at_step(monkeypatch, n, stop="Ctrl-C"):
    """Training stops by hand (Ctrl-C, or SIGTERM as a cluster sends it) at its n-th step."""
    real_step, calls = training.alp.train_step, {"n": 0}

    def step_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            if stop == "Ctrl-C":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(ALP, "train_step", step_then_stop)


@pytest.mark.slow
def test_epochs_of_a_one_class_model_make_no_best_checkpoint(synthetic_mnist_root, tmp_path, cheap_validation,
                                                             monkeypatch, capsys):
    one_class = torch.tensor([0] * 9 + [100])
    monkeypatch.setattr(training.loop, "validate", lambda *args, **kwargs: (0.1, 0.09, one_class))
    argv = quick_run(synthetic_mnist_root, tmp_path / "runs", "--epochs=1")
    ALP.main(argv)
    out = capsys.readouterr().out
    run_dir = run_folder_of(argv)
    assert not [name for name in os.listdir(run_dir) if name.startswith("best_")]
    assert "predicts class 9 for 100.00%" in out and "its figures make no best_*.pt" in out
    assert "done: no validated epoch gave figures worth keeping" in out


@pytest.mark.slow
def test_a_finished_run_grows_in_its_renamed_folder_and_warns_of_speed_options_that_change_the_arithmetic(
        finished_run, cheap_validation, capsys):
    argv, run_dir = finished_run  # 2 epochs under the constant (null) schedule
    with open(os.path.join(run_dir, "args.json")) as f:
        started_with_bf16 = json.load(f)["runs"][0]["in_force"]["amp"]  # where the CPU computes bf16
    grown = [*[a if a != "--epochs=2" else "--epochs=3" for a in argv], "--resume", "--no-amp", "--no-channels-last"]
    ALP.main(grown)
    captured = capsys.readouterr()
    new_dir = run_folder_of(grown)
    assert not os.path.exists(run_dir) and load_checkpoint(os.path.join(new_dir, "last.pt"))["epoch"] == 3
    grew = "--epochs 3: the run grows from 2 to 3 epochs (the null schedule is the same for both over the 2 epochs"
    assert grew in captured.out and f"{run_dir} is now {new_dir}" in captured.out
    with open(os.path.join(new_dir, "args.json")) as f:
        records = json.load(f)["runs"]
    assert [r.get("epochs_changed") for r in records] == [None, {"from": 2, "to": 3, "folder_was": run_dir}]
    (warning,) = captured.err.strip().splitlines()
    assert warning.startswith("warning: this --resume computes otherwise than the epochs in ")
    assert warning.endswith("the resumed run will not equal an uninterrupted one")
    assert "channels_last off (was on)" in warning and ("bf16 autocast off (was on)" in warning) == started_with_bf16
    with open(os.path.join(new_dir, "log.txt")) as f:
        log = f.read().splitlines()
    assert warning in log and any(line.startswith(grew) for line in log)
    assert [line.split("|")[0].split("/")[0] for line in log if line.startswith("epoch ")] == [
        f"epoch {n:3d}" for n in (1, 2, 3)]  # the lines logged as "/2" are not restored again


def grow_records(run_dir):
    """(the args.json records of an epochs change, the log.txt lines that say it) of the run in `run_dir`."""
    with open(os.path.join(run_dir, "args.json")) as f:
        changes = [r["epochs_changed"] for r in json.load(f)["runs"] if "epochs_changed" in r]
    with open(os.path.join(run_dir, "log.txt")) as f:
        return changes, [line for line in f.read().splitlines() if "the run grows from" in line]


@pytest.mark.slow
def test_a_grow_stopped_before_its_first_new_epoch_is_saved_leaves_the_run_as_it_was(
        finished_run, cheap_validation, monkeypatch, capsys):
    argv, run_dir = finished_run
    grown = [*[a if a != "--epochs=2" else "--epochs=3" for a in argv], "--resume"]
    stop_at_step(monkeypatch, 1)  # the grow's first step
    with pytest.raises(SystemExit) as stopped:
        ALP.main(grown)
    assert stopped.value.code == 130
    assert not os.path.exists(run_folder_of(grown)) and load_checkpoint(os.path.join(run_dir, "last.pt"))["epoch"] == 2
    assert grow_records(run_dir) == ([], [])
    capsys.readouterr()
    assert ALP.main([*argv, "--resume"]) is None  # the run under its own count: finished
    assert capsys.readouterr().out.strip() == f"{run_dir} is finished: all 2 epochs are done, nothing to resume"
    monkeypatch.setattr(ALP, "train_step", training.alp.train_step)
    ALP.main(grown)  # and the grow, again, goes through
    changes, lines = grow_records(run_folder_of(grown))
    assert changes == [{"from": 2, "to": 3, "folder_was": run_dir}] and len(lines) == 1


@pytest.mark.slow
def test_a_grow_stopped_between_its_first_new_epoch_and_the_rename_is_finished_once_by_the_same_command(
        finished_run, cheap_validation, monkeypatch, capsys):
    argv, run_dir = finished_run
    grown = [*[a if a != "--epochs=2" else "--epochs=3" for a in argv], "--resume"]
    real_rename = os.rename

    def stopped_rename(src, dst):
        monkeypatch.setattr(os, "rename", real_rename)
        raise KeyboardInterrupt  # the user's Ctrl-C, at the worst moment

    monkeypatch.setattr(os, "rename", stopped_rename)
    with pytest.raises(SystemExit):
        ALP.main(grown)
    assert load_checkpoint(os.path.join(run_dir, "last.pt"))["epoch"] == 3  # saved, under the old name
    assert "resume it with --epochs 3" in stops_in_one_line([*argv, "--resume"], capsys)  # not "finished"
    assert ALP.main(grown) is None  # finishes the rename, and the run is done
    assert f"{run_folder_of(grown)} is finished: all 3 epochs are done" in capsys.readouterr().out
    changes, lines = grow_records(run_folder_of(grown))
    assert changes == [{"from": 2, "to": 3, "folder_was": run_dir}] and len(lines) == 1
    assert not os.path.exists(run_dir)


@pytest.mark.slow
def test_a_folder_that_cannot_be_locked_on_resume_is_one_line(finished_run, monkeypatch, capsys):
    argv, run_dir = finished_run

    def read_only(self, folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(training.lock.RunLock, "__init__", read_only)
    err = stops_in_one_line([*argv, "--resume"], capsys)
    assert f"cannot lock the run folder {run_dir}" in err and "writable" in err


# --- a console that goes away ---------------------------------------------------------------------------------

def test_a_console_that_goes_away_ends_the_output_not_the_run(synthetic_mnist_root, tmp_path, cheap_validation,
                                                              monkeypatch):
    """CPU. `ALP.py ... | head -2`, or a pager quit: the pipe breaks, the run goes on into its log."""
    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    argv = quick_run(synthetic_mnist_root, tmp_path / "runs", "--epochs=1")
    monkeypatch.setattr(sys, "stdout", Gone())
    ALP.main(argv)
    with open(os.path.join(run_folder_of(argv), "log.txt")) as f:
        log = f.read().splitlines()
    assert log[0].startswith("starting ") and log[-1].startswith("done: ")


@pytest.mark.slow
def test_alp_piped_into_head_finishes_its_run_without_a_word_on_stderr(synthetic_mnist_root, tmp_path):
    """CPU. ALP.py's main() in a process of its own (tests/alp_process.py: a cheap validation)."""
    argv = quick_run(synthetic_mnist_root, tmp_path / "runs", "--epochs=1")
    process = subprocess.Popen([sys.executable, "tests/alp_process.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    process.stdout.readline()
    process.stdout.close()  # what head does after its lines
    _, err = process.communicate(timeout=300)
    assert (process.returncode, err) == (0, "")
    with open(os.path.join(run_folder_of(argv), "log.txt")) as f:
        assert f.read().splitlines()[-1].startswith("done: ")


# --- stopping by hand ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM"])
@pytest.mark.slow
def test_ctrl_c_and_sigterm_end_training_in_one_line_that_says_how_to_continue(
        stop, synthetic_mnist_root, tmp_path, cheap_validation, monkeypatch, capsys):
    argv = quick_run(synthetic_mnist_root, tmp_path / "runs", "--epochs=2")
    stop_at_step(monkeypatch, 3, stop)  # epoch 2, batch 1 (2 batches per epoch)
    with pytest.raises(SystemExit) as stopped:
        ALP.main(argv)
    assert stopped.value.code == {"Ctrl-C": 130, "SIGTERM": 143}[stop]  # 128 + the signal's number
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"stopped by {stop} in epoch 2;") and "--resume" in out[-1]
    with open(os.path.join(run_folder_of(argv), "log.txt")) as f:
        assert f.read().splitlines()[-1] == out[-1]
    monkeypatch.setattr(ALP, "train_step", training.alp.train_step)
    ALP.main([*argv, "--resume"])
    assert load_checkpoint(os.path.join(run_folder_of(argv), "last.pt"))["epoch"] == 2


def test_a_run_ended_by_an_error_lets_its_folder_go_so_the_same_process_resumes_it(
        synthetic_mnist_root, tmp_path, cheap_validation, monkeypatch):
    """CPU. A notebook or a test goes on after an exception that is neither Ctrl-C nor SIGTERM: the run's
    lock must not outlive the run, or --resume in that process is refused as in use by itself."""
    argv = quick_run(synthetic_mnist_root, tmp_path / "runs", "--epochs=2")
    real_step, calls = training.alp.train_step, {"n": 0}

    def step_failing_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2, batch 1 (2 batches per epoch): after epoch 1's checkpoint
            raise RuntimeError("a fault inside the training loop")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(ALP, "train_step", step_failing_once)
    with pytest.raises(RuntimeError, match="a fault inside the training loop"):
        ALP.main(argv)
    run_dir = run_folder_of(argv)
    assert training.lock.lock_holder(run_dir) is None
    ALP.main([*argv, "--resume"])  # the same process, the step now sound
    assert load_checkpoint(os.path.join(run_dir, "last.pt"))["epoch"] == 2


def test_a_run_stopped_before_its_first_checkpoint_is_told_to_start_again_not_to_resume(
        synthetic_mnist_root, tmp_path, cheap_validation, monkeypatch, capsys):
    argv = quick_run(synthetic_mnist_root, tmp_path / "runs", "--epochs=1")
    stop_at_step(monkeypatch, 1, "Ctrl-C")  # epoch 1, batch 1: no last.pt yet
    with pytest.raises(SystemExit):
        ALP.main(argv)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line.endswith("no checkpoint written yet: the same command without --resume starts the run again")
    run_dir = run_folder_of(argv)
    leftover = os.path.join(run_dir, "last.pt.0123456789ab.tmp")  # what a kill -9 in a write leaves
    with open(leftover, "wb") as f:
        f.write(b"half a checkpoint")
    monkeypatch.setattr(ALP, "train_step", training.alp.train_step)
    ALP.main(argv)  # as the line says: the folder it left takes the same command again
    assert load_checkpoint(os.path.join(run_dir, "last.pt"))["epoch"] == 1
    assert not os.path.exists(leftover)


def test_a_ctrl_c_in_the_first_checkpoint_write_leaves_no_temporary_file(synthetic_mnist_root, tmp_path,
                                                                         cheap_validation, monkeypatch, capsys):
    argv = quick_run(synthetic_mnist_root, tmp_path / "runs", "--epochs=1")
    real_replace = os.replace

    def replace_after_ctrl_c(src, dst):
        if str(dst).endswith("last.pt"):
            os.kill(os.getpid(), signal.SIGINT)  # lands here, between the temporary file and its rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_ctrl_c)
    with pytest.raises(SystemExit) as stop:
        ALP.main(argv)
    assert stop.value.code == 130
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("stopped by Ctrl-C in epoch 1; no checkpoint")
    assert not [name for name in os.listdir(run_folder_of(argv)) if name.endswith(".tmp") or name == "last.pt"]


# A sitecustomize.py that makes a script stop at a chosen moment, without a race: STOP_WITH (SIGINT or
# SIGTERM) is sent to the process when it first imports the module STOP_AT_IMPORT, when it renames a file
# into STOP_AT_RENAME_TO (the moment write_atomically puts a file in place), right after it writes a line
# holding STOP_AFTER_WRITING to stderr (its error line, before it exits), or with STOP_AT_EXIT in the last
# atexit callback (a Ctrl-C once the script's own code has ended).
STOPPING_SITECUSTOMIZE = """
import importlib.abc, os, signal, sys
signum = getattr(signal, os.environ["STOP_WITH"])

class StopAtImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == os.environ.get("STOP_AT_IMPORT"):
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signum)
        return None

sys.meta_path.insert(0, StopAtImport())
real_replace = os.replace

def replace_stopping(src, dst):
    if os.environ.get("STOP_AT_RENAME_TO") and str(dst).endswith(os.environ["STOP_AT_RENAME_TO"]):
        os.kill(os.getpid(), signum)
    return real_replace(src, dst)

os.replace = replace_stopping

class StderrStopping:
    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        written = self.stream.write(text)
        if os.environ.get("STOP_AFTER_WRITING") and os.environ["STOP_AFTER_WRITING"] in text:
            self.stream.flush()
            os.kill(os.getpid(), signum)
        return written

    def __getattr__(self, name):
        return getattr(self.stream, name)

sys.stderr = StderrStopping(sys.stderr)
if os.environ.get("STOP_AT_EXIT"):
    import atexit
    atexit.register(lambda: os.kill(os.getpid(), signum))
"""


def stopped_script(tmp_path, argv, **stop):
    """`python ARGV` (a script of the repository) stopped as `stop` says (see STOPPING_SITECUSTOMIZE)."""
    (tmp_path / "shim").mkdir(exist_ok=True)
    (tmp_path / "shim" / "sitecustomize.py").write_text(STOPPING_SITECUSTOMIZE)
    # The shim goes first on PYTHONPATH; what was there stays (packages installed through it).
    search_path = os.pathsep.join(filter(None, [str(tmp_path / "shim"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": search_path, **stop}
    return subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("script", ["ALP.py", "eval.py"])
@pytest.mark.parametrize("signum, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stop_while_a_script_imports_torch_is_one_line_with_the_shells_status(script, signum, status,
                                                                                tmp_path):
    stopped = stopped_script(tmp_path, [script, "x.pt"], STOP_WITH=signum, STOP_AT_IMPORT="torch")
    name = "Ctrl-C" if signum == "SIGINT" else "SIGTERM"
    assert (stopped.returncode, stopped.stderr) == (status, f"{script}: stopped by {name}\n")


@pytest.mark.parametrize("script", ["ALP.py", "eval.py"])
def test_a_sigterm_inside_an_import_that_catches_errors_still_stops_the_process_at_once(script, tmp_path):
    """CPU. numpy's import of numpy.linalg sits inside torch's own try: an exit raised there was swallowed,
    and the script ran on after saying it had stopped."""
    stopped = stopped_script(tmp_path, [script, "x.pt"], STOP_WITH="SIGTERM", STOP_AT_IMPORT="numpy.linalg")
    assert (stopped.returncode, stopped.stderr) == (143, f"{script}: stopped by SIGTERM\n")


def test_a_ctrl_c_after_the_scripts_error_line_leaves_that_line_its_last_word(tmp_path):
    """CPU. The stop lands between the error line and the exit: the user reads the refusal alone, with its
    status, never a refusal followed by a stop (a race a batch scheduler's SIGTERM once won)."""
    for stop in ({"STOP_AFTER_WRITING": "error:"}, {"STOP_AT_EXIT": "1"}):
        stopped = stopped_script(tmp_path, ["eval.py", tmp_path / "x.pt"], STOP_WITH="SIGINT", **stop)
        assert (stopped.returncode, stopped.stderr) == (2, f"eval.py: error: no checkpoint at {tmp_path / 'x.pt'}\n")


def test_a_bad_flag_stopped_right_after_its_error_line_ends_with_that_line_and_status_2(tmp_path):
    stopped = stopped_script(tmp_path, ["ALP.py", "--optimiser=adam"], STOP_WITH="SIGTERM",
                             STOP_AFTER_WRITING="error:")
    assert stopped.returncode == 2 and stopped.stderr.startswith("ALP.py: error: ") and "stopped" not in stopped.stderr


def test_a_ctrl_c_after_a_scripts_own_code_has_ended_without_error_is_silent(tmp_path):
    """CPU. In the last atexit callback the work is done and said: the process ends at once, with no line and
    no 'Exception ignored in atexit callback'."""
    program = tmp_path / "done.py"
    program.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom interrupts import stop_in_one_line\n"
                       "stop_in_one_line()\nprint('done')\n")
    stopped = stopped_script(tmp_path, [program], STOP_WITH="SIGINT", STOP_AT_EXIT="1")
    assert (stopped.returncode, stopped.stdout, stopped.stderr) == (130, "done\n", "")


@pytest.mark.slow
@pytest.mark.parametrize("script, argv", [("ALP.py", ["mnist", "mnist", "--resume", "--device=cpu"]),
                                          ("eval.py", ["x.pt"])])
def test_a_sigterm_at_random_moments_of_the_start_stops_the_script_or_comes_after_its_end(script, argv, tmp_path):
    """CPU. A batch scheduler's SIGTERM right at the start, 6 times at random moments between the start and
    the script's own refusal (of a missing run or checkpoint): each run either stops in one line with
    status 143, or had ended (exit 2, no word of a stop), never both, never a traceback. (Before the script's
    first line and after the interpreter's end, the signal's default action ends the process.)"""
    command = [sys.executable, script, *argv, *(["--out", str(tmp_path / "runs")] if script == "ALP.py" else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.time()
    unstopped = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert unstopped.returncode == 2
    whole = time.time() - started
    rng = random.Random(0)
    outcomes = set()
    for _ in range(6):
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env)
        time.sleep(rng.uniform(0.02, whole))
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=300)
        if process.returncode == 143:
            assert err == f"{script}: stopped by SIGTERM\n", err
        else:  # ended by its refusal, or by the signal's default action before Python's start or after its end
            assert process.returncode in (2, -signal.SIGTERM), (process.returncode, err)
            assert "stopped" not in err and "Traceback" not in err, err
        outcomes.add(process.returncode)
    assert 143 in outcomes  # the moments reached into the start


@pytest.mark.slow
def test_a_ctrl_c_while_args_json_is_written_is_one_line_that_says_how_to_continue(synthetic_mnist_root,
                                                                                   tmp_path):
    argv = quick_run(synthetic_mnist_root, tmp_path / "runs", "--epochs=1")
    stopped = stopped_script(tmp_path, ["ALP.py", *argv], STOP_WITH="SIGINT", STOP_AT_RENAME_TO="args.json")
    assert stopped.returncode == 130
    assert stopped.stderr == ("ALP.py: stopped by Ctrl-C; no checkpoint written yet: the same command without "
                              "--resume starts the run again\n")
    assert os.listdir(run_folder_of(argv)) == ["run.lock"]  # args.json's temporary file removed


# --- flags -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--device=meta"], "trains on cpu or cuda devices"),
    (["--subset=5"], "--subset must be at least the number of classes of mnist (10)"),
])
def test_flags_refused_before_anything_runs(extra, message, tmp_path, capsys):
    err = stops_in_one_line([*QUICK, *extra, "--out", str(tmp_path / "runs")], capsys)
    assert message in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, message", [
    (["--subset=100000"], "--subset 100000 is more than the 600 training images there are"),
    (["--ratio=0.99999"], "--ratio 0.99999 leaves 0 training and 600 validation images"),
    (["--subset=20"], "--subset 20 is fewer training images than one batch of 50 (-b): raise --subset or lower -b"),
])
def test_flags_that_do_not_fit_the_data_are_refused_before_a_run_folder_exists(extra, message, synthetic_mnist_root,
                                                                               tmp_path, capsys):
    err = stops_in_one_line([*QUICK, *extra, "--data-root", str(synthetic_mnist_root), "--out",
                             str(tmp_path / "runs")], capsys)
    assert message in err and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("extra, message", [
    (["--optimizer=adam", "-mom=0.9"], "-mom 0.9 is SGD's momentum, which --optimizer adam does not use"),
    (["-mom=0.5"], "-mom 0.5 is SGD's momentum"),  # QUICK's optimiser is adam
    (["--optimizer=sgd", "-beta1=0.5"], "-beta1 is Adam's, which --optimizer sgd does not use"),
    (["--optimizer=sgd", "-beta1=0.5", "-beta2=0.9"], "-beta1 and -beta2 are Adam's"),
])
def test_an_optimiser_option_the_optimiser_ignores_is_refused_in_one_line(extra, message, tmp_path, capsys):
    """CPU."""
    err = stops_in_one_line([*QUICK, *extra, "--out", str(tmp_path / "runs")], capsys)
    assert message in err and not (tmp_path / "runs").exists()


def test_the_optimiser_options_that_work_are_accepted_and_reach_the_optimiser():
    """CPU. -mom 0 with adam is the reference's own MNIST command: it asks for nothing adam does."""
    assert parse_args([*QUICK, "-mom=0", "-beta1=0.5"]).beta1 == 0.5
    args = parse_args([*QUICK, "--optimizer=sgd", "-mom=0.8"])
    assert (args.momentum, args.beta1, args.beta2) == (0.8, 0.9, 0.999)  # betas recorded at their defaults
    # what ALP.py hands the optimiser: its own options alone
    assert own_options(args.optimizer, args.momentum, args.beta1, args.beta2) == {"momentum": 0.8}
    adam = parse_args([*QUICK, "-mom=0", "-beta1=0.5"])
    assert own_options(adam.optimizer, adam.momentum, adam.beta1, adam.beta2) == {"betas": (0.5, 0.999)}


def test_epsilon_takes_a_fraction_and_warns_for_huge_step_counts(capsys):
    assert parse_args([*QUICK, "--epsilon=8/255"]).epsilon == pytest.approx(8 / 255)
    assert capsys.readouterr().err == ""
    parse_args([*QUICK, "--epsilon=1", "--steps=100000"])
    err = capsys.readouterr().err
    assert "--epsilon 1 lets ℓ∞ PGD reach any image" in err and "--steps 100000" in err
    with pytest.raises(SystemExit):
        parse_args([*QUICK, "--epsilon=8/0"])
    assert "a fraction such as 8/255" in capsys.readouterr().err


@pytest.mark.parametrize("attack, epsilon", [("pgd-linf", "76"), ("pgd-linf", "1.5"), ("pgd-l2", "510")])
def test_an_epsilon_in_0_255_units_is_refused_for_linf_and_l2_on_cpu(capsys, attack, epsilon):
    """ε above the distance between any two [0, 1] images (1 for ℓ∞, 28 for ℓ2 on MNIST) can only be 0-255
    units; the run would train against an attack that may turn any image into any other."""
    with pytest.raises(SystemExit) as stop:
        parse_args([*QUICK, f"--attack={attack}", f"--epsilon={epsilon}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"epsilon {epsilon} is above" in err and "0-255 units" in err and "8/255" in err
    assert len(err.strip().splitlines()) == 1


def test_an_l2_epsilon_above_1_within_the_image_diameter_is_accepted_on_cpu(capsys):
    """The reference's own MNIST ℓ2 radius is 2."""
    assert parse_args([*QUICK, "--attack=pgd-l2", "--epsilon=2"]).epsilon == 2
    assert capsys.readouterr().err == ""


def test_progress_is_on_only_where_a_person_watches_unless_forced(monkeypatch):
    assert parse_args(QUICK).progress is False  # pytest captures stderr: no terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert parse_args(QUICK).progress is True
    assert parse_args([*QUICK, "--no-progress"]).progress is False
    assert parse_args([*QUICK, "--progress"]).progress is True


def test_two_writers_of_one_file_each_leave_a_whole_file(tmp_path, monkeypatch):
    path = str(tmp_path / "report.json")
    real_replace, nested = os.replace, {"done": False}

    def replace_after_another_writer(src, dst):
        if not nested["done"]:  # a second writer finishes while the first is between write and rename
            nested["done"] = True
            write_atomically(path, json.dumps({"writer": 2}))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_another_writer)
    write_atomically(path, json.dumps({"writer": 1}))
    with open(path) as f:
        assert json.load(f) == {"writer": 1}
    assert os.listdir(tmp_path) == ["report.json"]


def test_the_curves_of_a_one_epoch_run_have_integer_ticks(tmp_path):
    fig = curves_figure([{"epoch": 1, "train_loss": 2.0, "train_adv_accuracy": 0.1, "clean_accuracy": 0.5,
                          "robust_accuracy": 0.2}])
    ticks = [t for t in fig.axes[1].get_xticks() if fig.axes[1].get_xlim()[0] <= t <= fig.axes[1].get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
