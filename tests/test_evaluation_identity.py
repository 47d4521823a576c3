"""Every figure eval.py prints belongs to the weights, images and options it names, all on the CPU: a units
folder or a finished JSON of another evaluation is set aside or refused, never reused, whatever the user did
between two runs (swapped the checkpoint, changed the data root or the JSON name, left a folder behind, made
it a link). Two trained MNIST nets, A and B; an evaluation is stopped halfway by a Ctrl-C raised inside its
fourth unit of work."""
import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

import evaluation
import evaluation.console
from conftest import assert_one_line_error, run_eval, train_on_digits, write_checkpoint
from formats import synthetic_digits, write_mnist
from utils import duration
from weights import build_model, to_reference_state_dict

CPU = torch.device("cpu")
# 24 images, FGSM and PGD-50 at linf 0.3 and the sanity PGD-20, in units of 4 images.
SELECTION = ("--images", "24", "--norms", "linf", "--attacks", "fgsm", "pgd-50", "-b", "4")


def trained(seed):
    torch.manual_seed(seed)
    return train_on_digits(build_model("mnist", "mnist").to(CPU), seed=seed)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """{"A": path, "B": path}: two MNIST nets trained on the synthetic digits from different seeds (CPU)."""
    folder = tmp_path_factory.mktemp("nets")
    return {name: write_checkpoint(folder / f"{name}.pt", trained(seed)) for name, seed in (("A", 0), ("B", 1))}


def figures(report):
    """What a reader takes from a report, without the seconds."""
    return {"clean": report["clean"],
            "tables": [(t["worst_case"], [(a["label"], a["attacked"], a["broken"]) for a in t["attacks"]])
                       for t in report["threat_models"]],
            "sanity": report["sanity"]["broken"]}


def evaluate(capsys, checkpoint, data_root, json_path, *extra):
    code, out, err = run_eval(capsys, checkpoint, "--data-root", data_root, "--json", json_path, *SELECTION, *extra)
    return code, out, err


@pytest.fixture(scope="module")
def fresh(nets, data_root, tmp_path_factory):  # noqa: F811
    """Each net's figures from an evaluation that nothing came before, with the test data root."""
    import eval as eval_script
    results = {}
    for name, path in nets.items():
        out = tmp_path_factory.mktemp(f"fresh-{name}") / "report.json"
        eval_script.main([str(path), "--device", "cpu", "--data-root", str(data_root), "--json", str(out),
                          *SELECTION])
        results[name] = figures(json.loads(out.read_text()))
    assert results["A"] != results["B"]  # else no test below could tell A's units from B's
    return results


@pytest.fixture
def stop_in_unit(monkeypatch):
    """stop_in_unit(k): the next evaluation gets a Ctrl-C inside its k-th unit of work, as from a user."""
    def arm(k):
        real, calls = evaluation.units.run_unit, []

        def run_unit(*args, **kwargs):
            calls.append(1)
            if len(calls) == k:
                monkeypatch.setattr(evaluation.units, "run_unit", real)
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        monkeypatch.setattr(evaluation.units, "run_unit", run_unit)
    return arm


def units_in(folder):
    return [name for name in os.listdir(folder) if name != evaluation.store.MANIFEST]


def stopped_halfway(capsys, stop_in_unit, checkpoint, data_root, json_path):
    stop_in_unit(4)
    code, _, err = evaluate(capsys, checkpoint, data_root, json_path)
    assert code == 130 and "run the same command to continue" in err, err
    assert len(units_in(f"{json_path}.units")) == 3


def test_a_checkpoint_swapped_under_a_stopped_evaluation_gets_figures_of_its_own(capsys, nets, data_root, fresh,
                                                                                 stop_in_unit, tmp_path):
    checkpoint, json_path = tmp_path / "last.pt", tmp_path / "last.eval.json"
    shutil.copy(nets["A"], checkpoint)
    stopped_halfway(capsys, stop_in_unit, checkpoint, data_root, json_path)
    shutil.copy(nets["B"], checkpoint)
    code, out, err = evaluate(capsys, checkpoint, data_root, json_path)
    assert code == 0, err
    assert "continuing" not in out
    assert "held the units of an evaluation of other weights: set aside as" in err and err.count("\n") == 1, err
    assert figures(json.loads(json_path.read_text())) == fresh["B"]
    aside = tmp_path / "last.eval.json.units.stale-1"
    assert len(units_in(aside)) == 3  # A's units are kept, aside
    assert not (tmp_path / "last.eval.json.units").exists()


def test_units_left_behind_by_a_deleted_report_are_not_taken_for_another_models(capsys, nets, data_root, fresh,
                                                                                stop_in_unit, tmp_path):
    json_path = tmp_path / "shared.json"
    stopped_halfway(capsys, stop_in_unit, nets["A"], data_root, json_path)
    json_path.unlink()
    code, out, err = evaluate(capsys, nets["B"], data_root, json_path)
    assert code == 0 and "set aside" in err and "continuing" not in out, err
    assert figures(json.loads(json_path.read_text())) == fresh["B"]


def test_two_json_names_with_one_stem_keep_their_units_apart(capsys, nets, data_root, fresh, stop_in_unit, tmp_path):
    stopped_halfway(capsys, stop_in_unit, nets["A"], data_root, tmp_path / "V.json")
    code, out, err = evaluate(capsys, nets["B"], data_root, tmp_path / "V.txt")
    assert code == 0 and "continuing" not in out and "set aside" not in err, err
    assert figures(json.loads((tmp_path / "V.txt").read_text())) == fresh["B"]
    assert len(units_in(tmp_path / "V.json.units")) == 3  # A's, still there to continue
    code, out, err = evaluate(capsys, nets["A"], data_root, tmp_path / "V.json")
    assert code == 0 and "continuing: 3 finished units" in out, err
    assert figures(json.loads((tmp_path / "V.json").read_text())) == fresh["A"]


def test_force_removes_a_units_folder_that_is_a_link_and_leaves_what_it_points_to(capsys, nets, data_root, fresh,
                                                                                stop_in_unit, tmp_path):
    other = tmp_path / "other.json"
    stopped_halfway(capsys, stop_in_unit, nets["A"], data_root, other)
    json_path = tmp_path / "X.json"
    os.symlink(tmp_path / "other.json.units", tmp_path / "X.json.units")
    code, out, err = evaluate(capsys, nets["B"], data_root, json_path, "--force")
    assert code == 0 and "continuing" not in out, err
    assert figures(json.loads(json_path.read_text())) == fresh["B"]
    assert not os.path.lexists(tmp_path / "X.json.units")
    assert len(units_in(tmp_path / "other.json.units")) == 3


def test_a_link_to_another_evaluations_units_is_set_aside_without_force(capsys, nets, data_root, fresh,
                                                                        stop_in_unit, tmp_path):
    stopped_halfway(capsys, stop_in_unit, nets["A"], data_root, tmp_path / "other.json")
    os.symlink(tmp_path / "other.json.units", tmp_path / "X.json.units")
    code, out, err = evaluate(capsys, nets["B"], data_root, tmp_path / "X.json")
    assert code == 0 and "other weights" in err and "continuing" not in out, err
    assert figures(json.loads((tmp_path / "X.json").read_text())) == fresh["B"]
    assert len(units_in(tmp_path / "other.json.units")) == 3


@pytest.fixture(scope="module")
def other_digits_root(tmp_path_factory):
    """Another data root: the same training digits, other test digits (CPU)."""
    root = tmp_path_factory.mktemp("other-digits")
    train_images, train_labels = synthetic_digits(400, seed=1)
    test_images, test_labels = synthetic_digits(200, seed=5)
    write_mnist(root, train_images, train_labels, test_images, test_labels)
    return root


def test_a_stopped_evaluation_continued_on_other_data_starts_afresh(capsys, nets, data_root, other_digits_root,
                                                                    stop_in_unit, tmp_path):
    json_path = tmp_path / "A.json"
    stopped_halfway(capsys, stop_in_unit, nets["A"], data_root, json_path)
    code, out, err = evaluate(capsys, nets["A"], other_digits_root, json_path)
    assert code == 0 and "other test images or labels" in err and "continuing" not in out, err
    code, _, err = evaluate(capsys, nets["A"], other_digits_root, tmp_path / "fresh.json")
    assert code == 0, err
    assert (figures(json.loads(json_path.read_text()))
            == figures(json.loads((tmp_path / "fresh.json").read_text())))


def test_a_finished_report_is_never_printed_for_other_weights_or_data(capsys, nets, data_root, other_digits_root,
                                                                      tmp_path):
    checkpoint, json_path = tmp_path / "last.pt", tmp_path / "last.json"
    shutil.copy(nets["A"], checkpoint)
    code, _, err = evaluate(capsys, checkpoint, data_root, json_path)
    assert code == 0, err
    code, out, _ = evaluate(capsys, checkpoint, data_root, json_path)
    assert code == 0 and "holds this evaluation, complete" in out  # the same: printed, not redone
    code, _, err = evaluate(capsys, checkpoint, other_digits_root, json_path)
    assert_one_line_error(code, err, "holds a finished evaluation of other test images or labels")
    code, _, err = evaluate(capsys, checkpoint, data_root, json_path, "-b", "8")
    assert_one_line_error(code, err, "another batch size (-b 4 then, -b 8 now)")
    shutil.copy(nets["B"], checkpoint)
    code, _, err = evaluate(capsys, checkpoint, data_root, json_path)
    assert_one_line_error(code, err, "holds a finished evaluation of other weights, not of what is evaluated now; "
                                     "pass --force")
    code, _, err = evaluate(capsys, checkpoint, data_root, json_path, "--force")
    assert code == 0, err


def test_a_bare_state_dict_told_another_data_set_is_not_given_the_old_report(capsys, nets, tmp_path):
    """A reference-style paras.pt evaluated as MNIST, then as Fashion-MNIST with the same --json."""
    root = tmp_path / "data"
    for folder, seed in (("MNIST", 2), ("FashionMNIST", 3)):
        images, labels = synthetic_digits(40, seed=seed)
        write_mnist(root, images[:20], labels[:20], images[20:], labels[20:], folder=folder)
    paras = tmp_path / "paras.pt"
    torch.save(to_reference_state_dict(torch.load(nets["A"], weights_only=True)["model"]), paras)
    json_path = tmp_path / "paras.json"
    selection = ("--model", "mnist", "--images", "8", "--norms", "linf", "--attacks", "fgsm", "-b", "4")
    code, _, err = run_eval(capsys, paras, "--dataset", "mnist", "--data-root", root, "--json", json_path, *selection)
    assert code == 0, err
    code, _, err = run_eval(capsys, paras, "--dataset", "fashionmnist", "--data-root", root, "--json", json_path,
                            *selection)
    assert_one_line_error(code, err, "another data set (mnist then, fashionmnist now) and other test images or labels")


def test_a_report_of_a_newer_release_is_refused_and_one_without_digests_is_not_reused(capsys, nets, data_root,
                                                                                     tmp_path):
    json_path = tmp_path / "A.json"
    code, _, err = evaluate(capsys, nets["A"], data_root, json_path)
    assert code == 0, err
    report = json.loads(json_path.read_text())
    assert report["format"] == evaluation.engine.REPORT_FORMAT
    assert report["evaluation"]["identity"]["weights"] == evaluation.weights_digest(trained(0))
    json_path.write_text(json.dumps({**report, "format": evaluation.engine.REPORT_FORMAT + 1}))
    code, _, err = evaluate(capsys, nets["A"], data_root, json_path)
    assert_one_line_error(code, err, f"was written by a newer release of this project (report format "
                                     f"{evaluation.engine.REPORT_FORMAT + 1}")
    del report["format"], report["evaluation"]["identity"]  # as the previous release wrote it
    json_path.write_text(json.dumps(report))
    code, _, err = evaluate(capsys, nets["A"], data_root, json_path)
    assert_one_line_error(code, err, "written by an earlier release, which kept no digests of them")


def test_unit_files_that_hold_no_unit_are_recomputed_with_one_warning(capsys, nets, data_root, fresh, stop_in_unit,
                                                                      tmp_path):
    json_path = tmp_path / "A.json"
    stopped_halfway(capsys, stop_in_unit, nets["A"], data_root, json_path)
    units = tmp_path / "A.json.units"
    first, second, third = sorted(units_in(units))
    saved = json.loads((units / first).read_text())
    saved["outcome"]["broken"] = saved["outcome"]["broken"][:2]  # two samples short
    (units / first).write_text(json.dumps(saved))
    (units / second).write_text("[1, 2, 3]")
    (units / third).write_text('{"key": "x", "outcome"')  # cut short
    code, out, err = evaluate(capsys, nets["A"], data_root, json_path)
    assert code == 0 and "continuing" not in out, err
    assert "3 files in" in err and "hold no unit of work that can be read" in err and err.count("\n") == 1, err
    assert figures(json.loads(json_path.read_text())) == fresh["A"]


def test_a_unit_that_cannot_be_written_stops_in_one_line_and_the_run_continues_later(capsys, nets, data_root, fresh,
                                                                                     tmp_path, monkeypatch):
    import errno
    real, writes = evaluation.store.write_atomically, []

    def disk_fills_up(path, data):
        writes.append(path)
        if len(writes) == 4:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(path, data)
    monkeypatch.setattr(evaluation.store, "write_atomically", disk_fills_up)
    json_path = tmp_path / "A.json"
    code, _, err = evaluate(capsys, nets["A"], data_root, json_path)
    assert_one_line_error(code, err, "no space left on the device")
    assert "the 3 finished units of work are kept in" in err and "run the same command to continue" in err
    monkeypatch.setattr(evaluation.store, "write_atomically", real)
    code, out, err = evaluate(capsys, nets["A"], data_root, json_path)
    assert code == 0 and "continuing: 3 finished units" in out, err
    assert figures(json.loads(json_path.read_text())) == fresh["A"]


def test_a_units_folder_that_cannot_be_made_is_refused_before_any_work(capsys, nets, data_root, tmp_path):
    (tmp_path / "A.json.units").write_text("a file where the folder goes")
    code, _, err = evaluate(capsys, nets["A"], data_root, tmp_path / "A.json", "--force")
    assert code == 0, err  # --force removes what stands in the way
    (tmp_path / "blocked").write_text("")
    code, _, err = evaluate(capsys, nets["A"], data_root, tmp_path / "blocked" / "A.json")
    assert_one_line_error(code, err, "cannot be written")


def test_a_continued_evaluation_keeps_its_batch_size_without_b(capsys, nets, data_root, fresh, stop_in_unit, tmp_path,
                                                               monkeypatch):
    """Without -b the default applies at the start; continued, the evaluation keeps the batch size it began
    with, so that its units count (on CUDA the default follows the free memory)."""
    import eval as eval_script
    json_path = tmp_path / "A.json"
    stopped_halfway(capsys, stop_in_unit, nets["A"], data_root, json_path)
    monkeypatch.setattr(eval_script, "default_batch_size", lambda *args: 6)
    without_b = [a for a in SELECTION if a not in ("-b", "4")]
    code, out, err = run_eval(capsys, nets["A"], "--data-root", data_root, "--json", json_path, *without_b)
    assert code == 0 and "continuing: 3 finished units" in out, err
    report = json.loads(json_path.read_text())
    assert report["evaluation"]["batch_size"] == 4 and figures(report) == fresh["A"]


def test_rounds_of_a_few_seconds_get_no_estimate(capsys, nets, data_root, tmp_path):
    code, out, err = evaluate(capsys, nets["A"], data_root, tmp_path / "quick.json")
    assert code == 0 and "estimated:" not in out, err


def test_once_each_attack_has_run_a_unit_the_estimate_is_the_time_the_rest_of_its_round_takes(
        capsys, nets, data_root, tmp_path, monkeypatch):
    """A fake clock in which an attack call costs its steps (1 for FGSM) in seconds per image: each line
    printed once every attack of a round has run its first unit names the seconds that the round's other
    units then take, as the clock measures them."""
    clock, events = [0.0], []
    units = evaluation.units
    monkeypatch.setattr(units, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    build_attack, seconds_left, run = units.build_attack, units.Runner.seconds_left, units.Runner.run

    def costed(name, epsilon, options, seed):
        attack = build_attack(name, epsilon, options, seed)

        def timed(model, x, y):
            clock[0] += options.get("steps", 1) * len(x)
            return attack(model, x, y)
        return timed

    def noted_estimate(self, *args):
        events.append(("estimate", clock[0]))
        return seconds_left(self, *args)

    def noted_round(self, *args, **kwargs):
        outcomes = run(self, *args, **kwargs)
        events.append(("end", clock[0]))
        return outcomes
    monkeypatch.setattr(units, "build_attack", costed)
    monkeypatch.setattr(units.Runner, "seconds_left", noted_estimate)
    monkeypatch.setattr(units.Runner, "run", noted_round)
    monkeypatch.setattr(evaluation.console, "ESTIMATE_FROM_SECONDS", 0)
    code, out, err = evaluate(capsys, nets["A"], data_root, tmp_path / "A.json")
    assert code == 0, err
    taken = [end - at for (kind, at), (_, end) in zip(events, events[1:]) if kind == "estimate"]
    assert taken and min(taken) > 0
    printed = [line for line in out.splitlines() if line.startswith("estimated:")]
    assert printed == [f"estimated: {duration(seconds)} more for this round of attacks (measured on the first batch "
                       f"of each)" for seconds in taken]
    assert out.index("estimated:") < out.index("| ℓ∞ |")  # before the table, which needs every unit


@pytest.mark.slow
def test_killed_with_kill_9_and_swapped_the_checkpoint_gets_figures_of_its_own(nets, data_root, fresh, tmp_path):
    """As a user would meet it: eval.py of A in its own process, killed (kill -9) once it has kept three units;
    B copied over the checkpoint; the same command."""
    import signal
    import subprocess
    import sys
    import time
    from conftest import ROOT
    checkpoint, json_path = tmp_path / "last.pt", tmp_path / "last.eval.json"
    shutil.copy(nets["A"], checkpoint)
    command = [sys.executable, str(ROOT / "eval.py"), str(checkpoint), "--device", "cpu", "--data-root",
               str(data_root), "--json", str(json_path), *SELECTION]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    units = tmp_path / "last.eval.json.units"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if units.is_dir() and len(units_in(units)) >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert process.wait(timeout=60) == -signal.SIGKILL
    shutil.copy(nets["B"], checkpoint)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "continuing" not in result.stdout and "other weights" in result.stderr
    assert figures(json.loads(json_path.read_text())) == fresh["B"]


def test_at_most_one_units_folder_is_kept_aside_one_of_this_evaluation_is_taken_up_again_and_force_clears_them(
        tmp_path):
    """CPU. Checkpoints swapped back and forth under an unfinished evaluation: A's units set aside for B's,
    then taken up again when A comes back; a third identity leaves one folder aside, not a pile of them."""
    from evaluation.files import open_units, stale_folders
    folder = str(tmp_path / "last.eval.json.units")
    identity = {name: {"weights": name} for name in "ABC"}
    open_units(folder, identity["A"], force=False)
    with open(os.path.join(folder, "a-unit.json"), "w") as f:
        f.write("{}")  # what tells A's folder from a new one
    _, notes = open_units(folder, identity["B"], force=False)
    assert stale_folders(folder) == [folder + ".stale-1"] and "starts afresh" in notes[0]
    _, notes = open_units(folder, identity["A"], force=False)  # A is back: its units with it
    assert os.path.isfile(os.path.join(folder, "a-unit.json")) and "takes up its own units again" in notes[0]
    assert len(stale_folders(folder)) == 1  # B's, aside
    open_units(folder, identity["C"], force=False)
    assert len(stale_folders(folder)) == 1  # A's; B's is gone
    open_units(folder, identity["C"], force=True)
    assert stale_folders(folder) == [] and os.path.isdir(folder)
