"""Nothing lost, nothing silent: damaged checkpoints, a full disk, one run per folder, resume
repairing what a kill left behind, non-finite weights. Everything runs on the CPU; the ALP runs here fail
before their data loads unless a test says otherwise."""
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest
import torch

import ALP
from training import records, resume
from training.lock import RunLock, lock_holder
from training.flags import parse_args
from training.run_folder import RunFolder
import utils
from checkpoints import (FORMAT_VERSION, CheckpointError, checkpoint_meta, content_digest, load_checkpoint,
                         read_pt_file, save_checkpoint)
from conftest import QUICK, ROOT, run_folder_of
from optimization import LEARNING_POLICIES, OPTIMIZERS
from models import MODELS

DEVICE = "cpu"


def small_state(epoch=1):
    torch.manual_seed(0)
    model = MODELS["mnist"](num_classes=10, mean=(0.5,), std=(0.25,)).to(DEVICE)
    return {"model": model.state_dict(), "meta": {"model": "mnist", "dataset": "mnist"}, "epoch": epoch}


def part_offset(path, part):
    """Where the bytes of a zip member start in the file (stored uncompressed, as torch.save writes)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(part))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_length, extra_length = (int.from_bytes(f.read(2), "little") for _ in range(2))
    return info.header_offset + 30 + name_length + extra_length, info.file_size


def flip_bytes(path, offset, n=64):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


@pytest.fixture
def saved(tmp_path):
    """A run folder with last.pt and best_robust.pt."""
    save_checkpoint(small_state(), str(tmp_path / "best_robust.pt"))
    save_checkpoint(small_state(), str(tmp_path / "last.pt"))
    return tmp_path


# --- checkpoint integrity --------------------------------------------------------------------------------------

def test_checkpoint_round_trip_keeps_the_content_and_checks_its_digest(saved):
    state = load_checkpoint(str(saved / "last.pt"))
    assert "digest" not in state  # checked and removed
    expected = small_state()
    assert all(torch.equal(state["model"][k], v) for k, v in expected["model"].items())
    assert content_digest(state) == content_digest(expected)


def test_flipped_bytes_in_tensor_data_are_refused_naming_the_file_and_the_other_checkpoints(saved):
    path = str(saved / "last.pt")
    offset, size = part_offset(path, "data/0")
    flip_bytes(path, offset + size // 2)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert path in message and "damaged" in message and "best_robust.pt" in message and "\n" not in message


def test_flipped_bytes_in_the_pickle_part_are_damage_not_code(saved):
    path = str(saved / "best_robust.pt")
    offset, size = part_offset(path, "data.pkl")
    flip_bytes(path, offset + size // 2, n=16)
    with pytest.raises(CheckpointError, match="is damaged") as info:
        load_checkpoint(path)
    assert "need code" not in str(info.value) and "last.pt" in str(info.value)


def test_content_that_no_longer_matches_its_digest_is_refused(saved):
    # a file whose zip checksums are right but whose content changed: only the digest can tell
    path = str(saved / "last.pt")
    state = torch.load(path, weights_only=True)
    state["model"]["fc2.weight" if "fc2.weight" in state["model"] else next(iter(state["model"]))] += 1e-3
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not match the digest stored with it"):
        load_checkpoint(path)


def test_checkpoint_without_a_digest_is_still_accepted(tmp_path):
    path = str(tmp_path / "old.pt")
    torch.save(small_state(), path)  # as this project wrote checkpoints before digests
    assert load_checkpoint(path)["epoch"] == 1


def test_a_checkpoint_carries_its_format_version_inside_its_digest(saved):
    path = str(saved / "last.pt")
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == FORMAT_VERSION
    torch.save({**state, "format_version": 0}, path)  # the version changed, the digest kept
    with pytest.raises(CheckpointError, match="does not match the digest stored with it"):
        load_checkpoint(path)


def test_a_checkpoint_from_before_format_versions_is_accepted(tmp_path):
    path = str(tmp_path / "previous-release.pt")
    torch.save({**small_state(), "digest": content_digest(small_state())}, path)  # a digest, no version
    assert load_checkpoint(path)["epoch"] == 1


def test_a_checkpoint_of_a_newer_format_is_refused_in_one_line_naming_both_versions(tmp_path):
    path = str(tmp_path / "future.pt")
    newer = FORMAT_VERSION + 1
    torch.save({**small_state(), "format_version": newer, "digest": "a digest computed otherwise"}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path} was written by a newer release of this project (checkpoint format "
                               f"{newer}; this code reads up to {FORMAT_VERSION}): update the code")


@pytest.mark.parametrize("content, says", [(b"", "the file is empty"),
                                           (b"model weights, honest\n", "is not a PyTorch checkpoint file"),
                                           (b"PK\x03\x04 not really a zip", "is damaged")])
def test_unreadable_files_are_one_line_errors(content, says, tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=says) as info:
        load_checkpoint(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_bare_state_dict_reads_with_read_pt_file_but_is_no_project_checkpoint(tmp_path):
    path = str(tmp_path / "paras.pt")
    torch.save(small_state()["model"], path)
    assert set(read_pt_file(path)) == set(small_state()["model"])
    assert set(load_checkpoint(path, require_meta=False)) == set(small_state()["model"])
    with pytest.raises(CheckpointError, match="no 'model' and 'meta' entries"):
        load_checkpoint(path)


# --- a full disk -----------------------------------------------------------------------------------------------

def full_disk(monkeypatch, after=1000):
    """Writes through utils (checkpoints, metrics.csv, curves.png, args.json) hit ENOSPC after `after` bytes."""
    real_open = open

    class FullFile(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[:after])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils, "open", lambda path, mode="r", *a, **k: (
        FullFile(path, "w") if "w" in mode else real_open(path, mode, *a, **k)), raising=False)


def test_disk_full_while_saving_raises_enospc_keeps_the_old_file_and_removes_the_temporary(saved, monkeypatch):
    path = str(saved / "last.pt")
    before = (saved / "last.pt").read_bytes()
    full_disk(monkeypatch)
    with pytest.raises(OSError) as info:
        save_checkpoint(small_state(epoch=2), path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == path
    assert (saved / "last.pt").read_bytes() == before
    assert sorted(p.name for p in saved.iterdir()) == ["best_robust.pt", "last.pt"]


def test_disk_full_during_an_epochs_writes_is_one_line_exit_2(saved, monkeypatch, capsys):
    model = MODELS["mnist"](num_classes=10, mean=(0.5,), std=(0.25,)).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = LEARNING_POLICIES["null"](optimizer, 2)
    row = {"epoch": 2, "lr": 0.1, "train_loss": 1.0, "train_adv_accuracy": 0.5, "clean_accuracy": 0.9,
           "robust_accuracy": 0.5, "seconds": 1.0}
    run = RunFolder(str(saved), {})
    run.best = {"clean_accuracy": 0.1, "robust_accuracy": 0.1}
    full_disk(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        run.save_epoch(model, optimizer, scheduler, {}, row, [{}], epochs=2, snapshot_every=5)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "no space left on the device" in err and "best_clean.pt" in err
    assert not [p for p in saved.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(str(saved / "last.pt"))["epoch"] == 1  # the previous one, intact


# --- resume refusals: one line, exit 2, before any data is loaded ---------------------------------------------

def run_folder_for(argv):
    run_dir = run_folder_of(argv)
    return run_dir, os.path.join(run_dir, "last.pt")


def resume_fails(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        ALP.main([*argv, "--resume"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def resumable_state(epoch=1, epochs=2):
    model = MODELS["mnist"](num_classes=10, mean=(0.1307,), std=(0.3081,)).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = LEARNING_POLICIES["null"](optimizer, epochs)
    return {**small_state(epoch), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "metrics": [], "best": {}, "rng": [{}]}


@pytest.fixture
def run_argv(tmp_path):
    argv = [*QUICK, "--epochs=2", "--subset=100", "--data-root", str(tmp_path / "no-data"), "--out",
            str(tmp_path / "runs")]
    run_dir, last = run_folder_for(argv)
    os.makedirs(run_dir)
    return argv, run_dir, last


def test_resume_of_an_empty_last_pt_is_refused_naming_the_other_checkpoints(run_argv, capsys):
    argv, run_dir, last = run_argv
    save_checkpoint(small_state(), os.path.join(run_dir, "best_clean.pt"))
    open(last, "wb").close()
    err = resume_fails(argv, capsys)
    assert last in err and "empty" in err and "best_clean.pt" in err


def test_resume_of_a_best_checkpoint_copied_over_last_pt_is_refused(run_argv, capsys):
    argv, run_dir, last = run_argv
    save_checkpoint(small_state(), os.path.join(run_dir, "best_robust.pt"))
    shutil.copy(os.path.join(run_dir, "best_robust.pt"), last)
    err = resume_fails(argv, capsys)
    assert "cannot be resumed" in err and "optimizer" in err


def test_resume_of_a_damaged_last_pt_is_refused(run_argv, capsys):
    argv, run_dir, last = run_argv
    save_checkpoint(resumable_state(), last)
    offset, size = part_offset(last, "data/0")
    flip_bytes(last, offset + size // 2)
    assert "damaged" in resume_fails(argv, capsys)


def test_resume_of_a_text_file_named_last_pt_is_refused(run_argv, capsys):
    argv, run_dir, last = run_argv
    with open(last, "w") as f:
        f.write("not a checkpoint\n")
    assert "not a PyTorch checkpoint file" in resume_fails(argv, capsys)


def test_resume_before_the_first_checkpoint_says_to_start_without_resume(run_argv, capsys):
    argv, _, _ = run_argv
    assert "without --resume" in resume_fails(argv, capsys)


def test_resume_with_an_argument_that_changes_the_result_is_refused(run_argv, capsys):
    argv, run_dir, last = run_argv
    save_checkpoint(resumable_state(), last)
    records.append_start(os.path.join(run_dir, "args.json"), vars(parse_args(argv)), {}, resume=False)
    err = resume_fails([*argv, "--eval-freq=2", "-beta1=0.5"], capsys)
    assert "--eval_freq 2 (the run has 1)" in err and "--beta1 0.5 (the run has 0.9)" in err


def test_an_option_the_runs_optimiser_ignores_does_not_gate_its_resume(run_argv, capsys):
    """CPU. An older adam run recorded SGD's momentum (the data set's default, or a -mom it ignored): resuming
    it compares only what adam reads."""
    argv, run_dir, last = run_argv
    save_checkpoint(resumable_state(epoch=2, epochs=2), last)
    recorded = {**vars(parse_args(argv)), "momentum": 0.9}
    records.append_start(os.path.join(run_dir, "args.json"), recorded, {}, resume=False)
    assert ALP.main([*argv, "--resume"]) is None  # found, compared, and finished
    assert "is finished" in capsys.readouterr().out
    records.append_start(os.path.join(run_dir, "args.json"), {**recorded, "beta1": 0.5}, {}, resume=False)
    assert "--beta1 0.9 (the run has 0.5)" in resume_fails(argv, capsys)  # what adam reads still counts
    assert lock_holder(run_dir) is None  # the refusal let the folder go: this process may resume it


def test_resume_of_a_finished_run_says_so_in_one_line_and_exits_0(run_argv, capsys):
    argv, run_dir, last = run_argv
    save_checkpoint(resumable_state(epoch=2, epochs=2), last)
    assert ALP.main([*argv, "--resume"]) is None
    out = capsys.readouterr().out
    assert out.strip() == f"{run_dir} is finished: all 2 epochs are done, nothing to resume"


# --- a checkpoint of another run, and every refusal leaving the folder as it was ---------------------------------

def folder_bytes(folder):
    """Every file under `folder` and its bytes: what a refusal must leave as it found it."""
    content = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(parent, name), "rb") as f:
                content[os.path.relpath(os.path.join(parent, name), folder)] = f.read()
    return content


def recorded_run(argv, run_dir, epoch=1, epochs=2, trained_with=None, data_digest="d" * 64, policy="null"):
    """A run folder as a run of `argv` leaves it after `epoch` epochs: args.json, log.txt, metrics.csv, the
    lock file of the process that ran it, and a last.pt whose own record says it was trained with `argv`
    changed by `trained_with` ({flag: value})."""
    args = vars(parse_args(argv))
    records.append_start(os.path.join(run_dir, "args.json"), args, {"data_digest": "d" * 64}, resume=False)
    trained = {**args, **(trained_with or {})}
    state = resumable_state(epoch, epochs)
    state["scheduler"] = LEARNING_POLICIES[policy](torch.optim.Adam(MODELS["mnist"](
        num_classes=10, mean=(0.1307,), std=(0.3081,)).parameters()), epochs).state_dict()
    state["meta"] = checkpoint_meta(trained["model"], trained["dataset"], trained, data_digest=data_digest)
    save_checkpoint(state, os.path.join(run_dir, "last.pt"))
    for name, text in (("log.txt", "epoch   1/2 | lr 0.001 | ...\n"), ("metrics.csv", "epoch,lr\n1,0.001\n"),
                       (RunLock.NAME, "4242\n")):
        with open(os.path.join(run_dir, name), "w") as f:
            f.write(text)


def test_a_last_pt_copied_from_a_run_with_other_arguments_is_refused_naming_them_and_the_folder_is_untouched(
        run_argv, capsys):
    argv, run_dir, last = run_argv
    recorded_run(argv, run_dir, trained_with={"steps": 40, "leverage": 0.0})
    before = folder_bytes(run_dir)
    err = resume_fails(argv, capsys)
    assert f"{last} is another run's checkpoint" in err
    assert "--leverage 0.0 (this run has 0.5), --steps 40 (this run has 3)" in err
    assert folder_bytes(run_dir) == before


def test_a_last_pt_of_another_network_is_refused_before_the_folder_changes(run_argv, capsys):
    argv, run_dir, last = run_argv
    recorded_run(argv, run_dir, trained_with={"model": "resnet20"})
    before = folder_bytes(run_dir)
    assert "--model resnet20 (this run has mnist)" in resume_fails(argv, capsys)
    assert folder_bytes(run_dir) == before


def test_a_last_pt_trained_on_other_data_than_the_folder_records_is_refused_before_the_folder_changes(
        run_argv, capsys):
    argv, run_dir, last = run_argv
    recorded_run(argv, run_dir, data_digest="e" * 64)
    before = folder_bytes(run_dir)
    err = resume_fails(argv, capsys)
    assert "trained on other data than this run (data digest eeeeeeeeeeee, the run's dddddddddddd" in err
    assert folder_bytes(run_dir) == before


def damage(last):
    offset, size = part_offset(last, "data/0")
    flip_bytes(last, offset + size // 2)


@pytest.mark.parametrize("change, extra, says", [
    (None, ["--eval-freq=2"], "--eval_freq 2 (the run has 1)"),
    (lambda last: shutil.copy(os.path.join(os.path.dirname(last), "best_clean.pt"), last), [], "cannot be resumed"),
    (damage, [], "damaged"),
    (None, ["--epochs=1"], "a run cannot shrink"),
    ("cosine", ["--epochs=3"], "the cosine schedule's learning rate depends on --epochs"),
])
def test_every_resume_refusal_leaves_the_folder_byte_for_byte_as_it_was(change, extra, says, run_argv, capsys):
    """CPU. The lock file included: the check that no live process holds it rewrites nothing."""
    argv, run_dir, last = run_argv
    if change == "cosine":
        argv = [*[a for a in argv if not a.startswith("-lp=")], "-lp=cosine"]
        run_dir, last = run_folder_for(argv)
        os.makedirs(run_dir)
    recorded_run(argv, run_dir, epoch=2, policy="cosine" if change == "cosine" else "null")
    save_checkpoint(small_state(), os.path.join(run_dir, "best_clean.pt"))
    if callable(change):
        change(last)
    before = folder_bytes(run_dir)
    assert says in resume_fails(with_epochs(argv, 2) + extra, capsys)
    assert folder_bytes(run_dir) == before


# --- another --epochs on --resume ------------------------------------------------------------------------------

def with_epochs(argv, epochs):
    return [a if not a.startswith("--epochs=") else f"--epochs={epochs}" for a in argv]


def finished_run_of(argv, policy):
    """A finished 2-epoch run folder of `argv` under the learning-rate policy `policy`: (its command line,
    its folder)."""
    argv = [*[a for a in argv if not a.startswith("-lp=")], f"-lp={policy}"]
    run_dir, last = run_folder_for(argv)
    os.makedirs(run_dir, exist_ok=True)
    save_checkpoint(resumable_state(epoch=2, epochs=2), last)
    return argv, run_dir


def test_more_epochs_for_a_run_whose_schedule_depends_on_them_are_refused_with_the_reason_first(run_argv,
                                                                                                 capsys):
    argv, run_dir = finished_run_of(run_argv[0], "cosine")
    err = resume_fails(with_epochs(argv, 3), capsys)
    assert err.split(": error: ", 1)[1] == (
        f"--resume --epochs 3: the cosine schedule's learning rate depends on --epochs (epoch 2 ran at 0.0005 "
        f"and would run at 0.00075 under --epochs 3), so the run at {run_dir} (2 epochs, all done) cannot grow "
        f"to 3 epochs: start a new run\n")
    assert os.path.isfile(os.path.join(run_dir, "last.pt"))


def test_fewer_epochs_than_a_run_has_done_are_refused_with_the_reason_first(run_argv, capsys):
    argv, run_dir = finished_run_of(run_argv[0], "null")
    err = resume_fails(with_epochs(argv, 1), capsys)
    assert err.split(": error: ", 1)[1].startswith(f"--resume --epochs 1: the run at {run_dir} has done 2 epochs "
                                                   f"already, and a run cannot shrink")


def test_more_epochs_are_refused_where_a_stopped_run_with_that_count_has_the_folder(run_argv, capsys):
    argv, run_dir = finished_run_of(run_argv[0], "null")
    other = run_folder_of(with_epochs(argv, 3))
    os.makedirs(other)
    err = resume_fails(with_epochs(argv, 3), capsys)
    assert f"--resume --epochs 3: {other} is there without a last.pt" in err and run_dir in err


def test_only_the_schedule_whose_learning_rate_or_state_depends_on_the_epoch_count_refuses_more_epochs(
        monkeypatch):
    for policy in LEARNING_POLICIES:  # the reference's milestones are epochs, not shares of --epochs
        refusal = resume.schedule_change_refusal(policy, 0.1, done=150, epochs=150, new_epochs=200)
        assert (refusal is None) == (policy != "cosine"), (policy, refusal)
    # milestones at half the run: the epoch done ran at the same rate, but the restored state would put the
    # drop at epoch 2 of 8 where a run started with 8 epochs has it at epoch 4
    monkeypatch.setitem(LEARNING_POLICIES, "half", lambda optimizer, epochs: torch.optim.lr_scheduler.MultiStepLR(
        optimizer, [epochs // 2]))
    assert resume.schedule_change_refusal("half", 0.1, done=1, epochs=4, new_epochs=8) == (
        "the state of the half schedule, which --resume restores, depends on --epochs (milestones "
        "Counter({2: 1}) vs Counter({4: 1}))")


def test_a_cosine_run_of_one_epoch_refuses_to_grow_in_learning_rates_not_the_schedulers_internals():
    refusal = resume.schedule_change_refusal("cosine", 0.0001, done=1, epochs=1, new_epochs=2)
    assert refusal == ("the cosine schedule's learning rate depends on --epochs (epoch 2 would run at 0 under "
                       "--epochs 1 and at 5e-05 under --epochs 2)")


def test_a_resume_names_the_speed_options_and_device_that_change_the_arithmetic():
    before = {"device": "cpu", "amp": True, "channels_last": True, "compile": False, "cudnn_benchmark": False}
    assert resume.arithmetic_changes(before, {**before, "cudnn_benchmark": True}) == []
    assert resume.arithmetic_changes(before, {**before, "device": "cuda:0", "amp": False}) == [
        "device cuda (was cpu)", "bf16 autocast off (was on)"]
    assert resume.arithmetic_changes({"device": "cuda"}, {**before, "device": "cuda:1"}) == []  # not recorded: no


# --- one run per folder ----------------------------------------------------------------------------------------

HOLD_LOCK = ("import sys; sys.path.insert(0, {root!r}); from training.lock import RunLock; lock = RunLock({folder!r}); "
             "print('locked', flush=True); {then}")


@pytest.mark.slow
def test_a_second_run_in_a_folder_in_use_is_refused_with_the_first_ones_pid(run_argv, capsys):
    argv, run_dir, _ = run_argv
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK.format(root=str(ROOT), folder=run_dir,
                                                                    then="sys.stdin.read()")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume"]):
            with pytest.raises(SystemExit) as stop:
                ALP.main([*argv, *extra])
            err = capsys.readouterr().err
            assert stop.value.code == 2 and f"in use by a running process (PID {holder.pid})" in err
    finally:
        holder.communicate("")


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    killed = subprocess.run([sys.executable, "-c", HOLD_LOCK.format(
        root=str(ROOT), folder=str(tmp_path), then="import os, signal; os.kill(os.getpid(), signal.SIGKILL)")],
        capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    lock_file = tmp_path / RunLock.NAME
    assert lock_file.read_text().strip() != str(os.getpid())  # the dead run's PID is still written there
    assert lock_holder(str(tmp_path)) is None
    lock = RunLock(str(tmp_path))
    assert lock_file.read_text().strip() == str(os.getpid())
    lock.release()


def test_runs_differing_in_ratio_get_different_folders():
    names = {records.run_name(vars(parse_args([*QUICK, f"--ratio={r}"]))) for r in (0, 0.1, 0.2)}
    assert len(names) == 3


# --- non-finite weights ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_weights_made_non_finite_by_an_epochs_last_step_are_never_saved(synthetic_mnist_root, tmp_path,
                                                                          monkeypatch, capsys):
    steps = {"n": 0}

    class AdamBreakingOnStep4(torch.optim.Adam):
        def step(self, closure=None):
            result = super().step(closure)
            steps["n"] += 1
            if steps["n"] == 4:  # 2 batches per epoch: epoch 2's last step, whose loss was finite
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("inf"))
            return result

    monkeypatch.setitem(OPTIMIZERS, "adam", lambda params, lr, weight_decay, betas, fused=False:
                        AdamBreakingOnStep4(params, lr=lr, betas=betas, weight_decay=weight_decay))
    with pytest.raises(SystemExit) as stop:
        ALP.main([*QUICK, "--epochs=3", "--eval-freq=5", "--subset=100", "--data-root", str(synthetic_mnist_root),
                  "--out", str(tmp_path)])
    assert stop.value.code == 1
    assert "weights became NaN or infinite in epoch 2" in capsys.readouterr().err
    (run,) = os.listdir(tmp_path)
    state = load_checkpoint(str(tmp_path / run / "last.pt"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# --- bad input before any run folder exists --------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--epsilon=inf", "--epsilon=nan", "--stepsize=inf", "-lr=nan", "--leverage=inf"])
def test_non_finite_numbers_are_refused_before_a_run_folder_exists(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        ALP.main([*QUICK, flag, "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "must be a finite number" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as stop:
        parse_args([*QUICK, "--out", str(tmp_path / "file")])
    assert stop.value.code == 2 and "--out" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_device_without_a_gpu_is_refused_in_one_line(device, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["mnist", "mnist", f"--device={device}"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_args_json_from_before_run_records_is_read_as_the_first_run(tmp_path):
    with open(tmp_path / "args.json", "w") as f:
        json.dump({"epochs": 3, "lr": 0.1}, f)
    assert RunFolder(str(tmp_path), {}).first_args() == {"epochs": 3, "lr": 0.1}


def test_log_lines_are_matched_to_their_epoch_by_number_whatever_their_count_and_words():
    """CPU. A resume adds the lines of epochs that last.pt holds and log.txt lacks: a line logged with
    another --epochs or by a script that named its training accuracy otherwise still counts."""
    from training.records import logged_epoch
    assert logged_epoch("epoch   2/3 | lr 0.1 | loss 1.0000 | adv acc 50.00% | 1.0s") == 2
    assert logged_epoch("epoch  12/100 | lr 0.001 | loss 1.0000 | train acc 50.00% | 1.0s") == 12
    assert logged_epoch("(epoch 2's line, restored from last.pt: the run was stopped before it was logged)") is None
    assert logged_epoch("epoch 8: 71/235 batch (30%) in 20 s, about 46 s left") is None
