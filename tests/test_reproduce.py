"""reproduce.py and its reproduction package: the reference's tables as data (and the README's copy of them),
the folder it claims, its labels and estimate, and a shortened trial end to end on the MNIST stand-in, killed
in each stage and continued. Every test runs on the CPU."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import reproduce
from conftest import ROOT
from reference import SOURCE, TABLES, TEST_IMAGES
from reproduction import child_scripts
from reproduction.comparison import allowed_difference
from reproduction.estimate import Estimate
from reproduction.plan import evaluations, trial_label

# --- the reference's figures: one place, and the README's copy --------------------------------------------

README_DATA_SETS = {"CIFAR-10": "cifar10", "MNIST": "mnist", "FashionMNIST": "fashionmnist"}
README_NORMS = {"ℓ∞": "linf", "ℓ2": "l2", "ℓ1": "l1"}


def readme_reference_rows():
    """{(data set, norm, ε, net, leverage): (LP, Nat, {column: figure})} from the README's Reference results."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Reference results\n", 1)[1].split("\n## ", 1)[0]
    rows, dataset, header = {}, None, None
    for line in section.splitlines():
        line = line.strip()
        if line in README_DATA_SETS:
            dataset = README_DATA_SETS[line]
        elif line.startswith("| :"):
            continue
        elif line.startswith("|"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            if cells[0] in README_NORMS:
                header = cells
                continue
            norm = README_NORMS[header[0]]
            epsilon, leverage, net, lp, nat = cells[:5]
            key = (dataset, norm, epsilon, net, leverage)
            assert key not in rows, key
            rows[key] = (lp, float(nat), dict(zip(header[5:], map(float, cells[5:]), strict=True)))
    return rows


def test_readme_reference_results_are_the_reference_data_on_cpu():
    readme = readme_reference_rows()
    data = {}
    for table in TABLES.values():
        if table.dataset not in README_DATA_SETS.values():
            continue  # CIFAR-100's rows are in the data only
        for threat_model in table.threat_models:
            data[(table.dataset, threat_model.norm, threat_model.epsilon, table.net, table.leverage)] = (
                table.lp, table.clean, {column.label: column.figure for column in threat_model.columns})
    assert readme == data
    assert SOURCE["commit"][:7] in (ROOT / "README.md").read_text().split("\n## Reference results\n")[1][:1500]


def test_every_table_trains_with_the_reference_command_and_names_eval_attacks_on_cpu():
    from evaluation import attack_names
    for name, table in TABLES.items():
        assert table.training[:2] == [table.net.lower(), table.dataset]
        assert f"--leverage={table.leverage}" in table.training
        for _, attacks in evaluations(table):
            assert set(attacks) <= set(attack_names())
    assert TABLES["mnist"].training[2:] == ("-lp=null --epochs=84 -lr=0.0001 -wd=0 -mom=0 --optimizer=adam -b=50 "
                                            "--epsilon=0.3 --steps=40 --stepsize=0.01 --leverage=0.5").split()


def test_help_lists_every_table_with_the_commands_it_runs_on_cpu():
    text = reproduce.build_parser().format_help()
    for name, table in TABLES.items():
        assert f"  {name}: {table.title}" in text
        assert f"python ALP.py {' '.join(table.training)}" in text
    assert "python eval.py <run>/last.pt --norms l2 --attacks pgd-100 deepfool cw aa" in text


def test_no_table_is_answered_with_the_list_of_tables_in_one_line_on_cpu(capsys):
    with pytest.raises(SystemExit) as stop:
        reproduce.main([])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert all(name in err for name in TABLES)


def test_the_shortened_trial_in_the_help_is_the_readmes_on_cpu():
    example = re.search(r"python (reproduce\.py mnist --epochs .*?)  +#", reproduce.__doc__).group(1)
    assert f".venv/bin/python {example}" in (ROOT / "README.md").read_text()


# --- the folder, the labels, the estimate, the spread -----------------------------------------------------

class Stop(Exception):
    pass


def start_and_stop(monkeypatch, argv):
    """reproduce.main in-process up to its first script, which is not run: the folder is claimed."""
    def no_script(*args, **kwargs):
        raise Stop
    monkeypatch.setattr(child_scripts, "run_script", no_script)
    with pytest.raises(Stop):
        reproduce.main(argv)


def refusal(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        reproduce.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


def test_a_folder_holding_other_work_is_refused_in_one_line_on_cpu(monkeypatch, tmp_path, capsys):
    folder = str(tmp_path / "repro")
    start_and_stop(monkeypatch, ["mnist", "--out", folder, "--epochs", "2", "--subset", "100"])
    start_and_stop(monkeypatch, ["mnist", "--out", folder, "--epochs", "2", "--subset", "100"])  # the same: fine
    assert "another table (mnist, not fashionmnist)" in refusal(capsys, ["fashionmnist", "--out", folder])
    assert "another command (`reproduce.py mnist --epochs 2 --subset 100`, not `reproduce.py mnist --epochs 3" \
        in refusal(capsys, ["mnist", "--out", folder, "--epochs", "3", "--subset", "100"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not a reproduction's" in refusal(capsys, ["mnist", "--out", str(foreign)])
    for damaged in ("[]", "null", '"x"', "[" * 100_000):  # JSON, but no request; nested past the parser
        (foreign / "request.json").write_text(damaged)
        assert "not a reproduction's" in refusal(capsys, ["mnist", "--out", str(foreign)])
    (foreign / "request.json").unlink()
    os.mkfifo(foreign / "request.json")  # opening it would wait for a writer forever
    assert "not a reproduction's" in refusal(capsys, ["mnist", "--out", str(foreign)])
    assert "--epochs must be a positive integer, not 0" in refusal(capsys, ["mnist", "--epochs", "0"])
    assert "invalid choice: 'cifar10'" in refusal(capsys, ["cifar10"])


def test_another_data_root_on_a_reproduction_is_refused_naming_both_on_cpu(monkeypatch, tmp_path, capsys):
    folder = str(tmp_path / "repro")
    start_and_stop(monkeypatch, ["mnist", "--out", folder, "--data-root", str(tmp_path / "data")])
    err = refusal(capsys, ["mnist", "--out", folder, "--data-root", str(tmp_path / "other")])
    assert f"holds the work of --data-root {tmp_path / 'data'}, not {tmp_path / 'other'}" in err


# A finished eval.py report as the engine writes it (evaluation/engine.py), cut to one attack: 16 test images,
# all correct clean, FGSM broke 6 of the 16 it attacked.
def finished_report(weights="w" * 64, data_root="/data"):
    return {"complete": True, "corruptions": None, "transfer": None, "sweep": None,
            "evaluation": {"n": 16, "identity": {"weights": weights}, "data_root": data_root,
                           "requested": {"checkpoint": "/runs/last.pt"}},
            "clean": {"correct": 16, "accuracy": 1.0},
            "threat_models": [{"norm": "linf", "epsilon": 0.3, "epsilon_label": "0.3",
                               "attacks": [{"label": "FGSM", "attacked": 16, "broken": 6, "robust_accuracy": 0.625}],
                               "worst_case": {"robust": 10, "robust_accuracy": 0.625}}]}


def edited(change):
    report = finished_report()
    change(report)
    return report


FGSM = ("linf", "0.3", "FGSM")


@pytest.mark.parametrize("report, field", [
    (edited(lambda r: r["threat_models"][0]["attacks"][0].update(robust_accuracy=0.97)),
     "threat_models[0].attacks[0].robust_accuracy (FGSM): 0.97 is not the 10 of 16 images left unbroken"),
    (edited(lambda r: r["threat_models"][0]["attacks"][0].update(robust_accuracy="0.625")),
     "threat_models[0].attacks[0].robust_accuracy (FGSM): '0.625' is not"),
    (edited(lambda r: r["threat_models"][0]["attacks"].clear()), "threat_models[0].attacks: missing or empty"),
    (edited(lambda r: r["threat_models"].clear()), "threat_models: missing or empty"),
    (edited(lambda r: r["threat_models"][0].update(epsilon_label="0.1")), "threat_models: no FGSM at linf 0.3"),
    (edited(lambda r: r.update(clean=None)), "clean.correct: missing"),
    (edited(lambda r: r["evaluation"].update(n=0)), "evaluation.n: 0 is not a positive number"),
    (edited(lambda r: r["evaluation"]["identity"].update(weights="v" * 64)),
     "evaluation.identity.weights: not the digest"),
    (edited(lambda r: r["evaluation"].update(data_root="/elsewhere")),
     "evaluation.data_root: '/elsewhere' is not this reproduction's --data-root /data"),
])
def test_a_report_is_refused_in_one_line_naming_the_file_and_field_where_it_is_not_what_eval_wrote_on_cpu(
        report, field, capsys):
    from reproduction.folder import checked
    assert checked("eval-linf.json", finished_report(), "w" * 64, "/data", [FGSM]) == finished_report()
    with pytest.raises(SystemExit) as stop:
        checked("eval-linf.json", report, "w" * 64, "/data", [FGSM])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"eval-linf.json: {field}" in err and "remove eval-linf.json and run the same command" in err, err


def test_eval_refuses_to_reprint_a_finished_report_whose_figure_contradicts_its_counts_on_cpu(tmp_path):
    from evaluation.files import check_report
    report = edited(lambda r: r["threat_models"][0]["attacks"][0].update(robust_accuracy=0.97))
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(report))
    with pytest.raises(ValueError, match=r"robust_accuracy \(FGSM\): 0.97 is not the 10 of 16 .*pass --force"):
        check_report(str(path), report["evaluation"]["requested"], report["evaluation"]["identity"], force=False)


def test_shortening_flags_make_a_labelled_trial_with_a_folder_of_its_own_on_cpu(monkeypatch, tmp_path, capsys):
    table = TABLES["mnist"]
    assert trial_label(table, {}, TEST_IMAGES) is None
    label = trial_label(table, {"epochs": 2, "subset": 100}, 50)
    assert label.startswith("SHORTENED TRIAL, NOT A REPRODUCTION (2 of the reference's 84 epochs, 100 training "
                            "images (--subset), 50 of the 10,000 test images)")
    monkeypatch.chdir(tmp_path)
    start_and_stop(monkeypatch, ["mnist", "--epochs", "2", "--images", "50"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("SHORTENED TRIAL, NOT A REPRODUCTION")
    assert (tmp_path / "reproductions" / "mnist-trial-epochs2-images50" / "request.json").is_file()
    start_and_stop(monkeypatch, ["mnist", "--epochs", "84"])  # the reference's own count shortens nothing
    out = capsys.readouterr().out
    assert out.startswith("REPRODUCTION of the reference's MNIST table")
    assert (tmp_path / "reproductions" / "mnist" / "request.json").is_file()


def test_the_estimate_says_the_cpu_order_of_the_full_mnist_table_on_cpu(tmp_path, capsys):
    """ALP.py's lines as it printed them for the reference MNIST command on this project's CPU (README,
    Train: 12-13 min per epoch, 7 min of it validation): training 84 x 13 min, evaluation hours more."""
    table = TABLES["mnist"]
    estimate = Estimate(str(tmp_path), "mnist", TEST_IMAGES, evaluations(table), "cpu")
    estimate.read_training_line("starting runs/x at epoch 1/84 on 1 x cpu (...); 60000 training, 10000 "
                                "validation images\n")
    estimate.read_training_line("estimated: 13 min per epoch (training 5.8 min, validation 7.1 min), 18 h for "
                                "84 epochs (timed on 3 training batches and 100 validation images)\n")
    out = capsys.readouterr().out
    assert "estimated on cpu: training 18 h" in out
    evaluation = re.search(r"evaluation at most (\d+(?:\.\d+)?) h", out)
    assert evaluation and 10 < float(evaluation.group(1)) < 40, out  # the README's 100-image runs: ~19 h
    assert json.loads((tmp_path / "estimate.json").read_text())["seconds_per_image_step"] > 0


def test_the_estimate_takes_the_validation_images_from_the_starting_line_alone_on_cpu(tmp_path, capsys):
    """With --eval-freq, ALP.py's estimate line names its timed images after "training," too."""
    estimate = Estimate(str(tmp_path), "mnist", 100, evaluations(TABLES["mnist"]), "cpu")
    estimate.read_training_line("starting runs/x at epoch 1/84 on 1 x cpu (...); 60000 training, 10000 "
                                "validation images\n")
    estimate.read_training_line("estimated: 5.8 min per epoch of training, 7.1 min per validation (17 validated "
                                "epochs), 10 h for 84 epochs (timed on 3 training batches and 100 validation "
                                "images)\n")
    assert estimate.validation_images == 10_000
    per_step = json.loads((tmp_path / "estimate.json").read_text())["seconds_per_image_step"]
    assert per_step == pytest.approx(7.1 * 60 / (10_000 * 101))  # PGD-100: 100 steps and the clean pass
    assert "estimated on cpu: training 10 h" in capsys.readouterr().out


@pytest.mark.parametrize("kept", ['{"seconds_per_image_step": "x"}', '{"seconds_per_image_step": null}', '"x"',
                                  "[" * 100_000])
def test_a_damaged_estimate_json_says_nothing_and_stops_nothing_on_cpu(tmp_path, capsys, kept):
    (tmp_path / "estimate.json").write_text(kept)
    Estimate(str(tmp_path), "mnist", 100, [], "cpu").say_for_evaluation(evaluations(TABLES["mnist"]))
    assert capsys.readouterr().out == ""


def test_allowed_difference_is_three_binomial_standard_errors_plus_the_seed_allowance_on_cpu():
    assert allowed_difference(50.0, TEST_IMAGES) == pytest.approx(300 * (0.5 / TEST_IMAGES) ** 0.5 + 1)
    assert allowed_difference(99.41, 20) > allowed_difference(99.41, TEST_IMAGES)


# --- a shortened trial on the MNIST stand-in, in a subprocess ---------------------------------------------

TRIAL = ["mnist", "--epochs", "2", "--subset", "50", "--images", "4", "--device", "cpu"]


def command(data_root, out):
    return [sys.executable, str(ROOT / "reproduce.py"), *TRIAL, "--data-root", str(data_root), "--out", str(out)]


def start(data_root, out, **kwargs):
    return subprocess.Popen(command(data_root, out), text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            **kwargs)


def run(data_root, out):
    """The trial's output, once it has ended well."""
    process = start(data_root, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    output, errors = process.communicate()
    assert process.returncode == 0, output[-3000:] + errors[-3000:]
    return output


def descendants(pid):
    """The processes below pid (read from /proc: ppid is the 4th field of /proc/PID/stat)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_when(data_root, out, seen, how):
    """Start the trial; once a line of its output contains `seen`, stop it: "kill" kills it and the script
    it runs with SIGKILL (a lost machine), "ctrl-c" sends SIGINT to reproduce.py alone. Returns its output."""
    process = start(data_root, out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if seen in line:
            if how == "kill":
                children = descendants(process.pid)
                for pid in [process.pid, *children]:
                    os.kill(pid, signal.SIGKILL)
                process.wait()
                for pid in children:  # reaped by init: wait until they are gone
                    while os.path.exists(f"/proc/{pid}"):
                        time.sleep(0.05)
            else:
                process.send_signal(signal.SIGINT)
            break
    lines += process.stdout.readlines()
    process.wait()
    assert process.returncode == (-signal.SIGKILL if how == "kill" else 130), "".join(lines)[-3000:]
    return "".join(lines)


def figures(folder):
    report = json.loads((folder / "report.json").read_text())
    return [(row["label"], row["ours"]) for t in report["threat_models"] for row in t["rows"]]


@pytest.mark.slow
def test_a_shortened_trial_runs_end_to_end_and_a_kill_in_each_stage_changes_no_figure_on_cpu(
        mnist_stand_in_root, tmp_path):
    """One test, so that the uninterrupted trial runs once even when the tests are shared out over processes;
    it runs beside the interrupted one, on the other core."""
    finished = tmp_path / "uninterrupted"
    log = tmp_path / "uninterrupted.log"
    with open(log, "w") as sink:  # a file, not a pipe, which would fill while nothing reads it
        uninterrupted = start(mnist_stand_in_root, finished, stdout=sink, stderr=subprocess.STDOUT)
    out = tmp_path / "interrupted"
    kill_when(mnist_stand_in_root, out, "epoch   1/2", "kill")  # training, after its first epoch
    stopped = kill_when(mnist_stand_in_root, out, "runs ℓ2 2", "ctrl-c")  # evaluation, in its second run
    kill_when(mnist_stand_in_root, out, "All figures: " + str(out / "eval-l1.json"), "kill")  # the report
    continued = run(mnist_stand_in_root, out)

    uninterrupted.wait()
    output = log.read_text()
    assert uninterrupted.returncode == 0, output[-3000:]
    label = "SHORTENED TRIAL, NOT A REPRODUCTION (2 of the reference's 84 epochs, 50 training images"
    assert output.startswith(label)
    assert "reproduce.py: estimated on cpu: training" in output
    report = json.loads((finished / "report.json").read_text())
    assert report["kind"] == "shortened trial" and report["label"].startswith(label)
    assert label in (finished / "report.md").read_text()
    assert (finished / "report.png").stat().st_size > 10_000
    linf = json.loads((finished / "eval-linf.json").read_text())
    assert report["evaluation"]["images"] == linf["evaluation"]["n"] == 4
    pgd = next(a for a in linf["threat_models"][0]["attacks"] if a["label"] == "PGD-100")
    row = next(r for t in report["threat_models"] if t["norm"] == "linf" for r in t["rows"] if r["label"] == "PGD-100")
    assert row["ours"] == round(100 * pgd["robust_accuracy"], 2)
    assert row["difference"] == round(row["ours"] - 96.08, 2)
    assert [len(t["rows"]) for t in report["threat_models"]] == [1, 5, 4, 2]  # clean, ℓ∞, ℓ2, ℓ1
    assert re.search(r"\n  PGD-100 +96\.08 +[0-9.]+ +[-+][0-9.]+ +±[0-9.]+", output)  # the side-by-side table

    assert "stopped by Ctrl-C in the evaluation; the same command continues" in stopped
    assert "--resume" in stopped and "resuming" in stopped and "All figures: " + str(out / "eval-linf.json") in stopped
    assert "training: done" in continued and "evaluation at ℓ∞: done" in continued
    assert figures(out) == figures(finished)

    moved = tmp_path / "moved"  # the absolute paths in its reports are the old folder's now
    os.rename(out, moved)
    again = run(mnist_stand_in_root, moved)
    assert again.count(": done, ") == 4 and "$ " not in again  # training and 3 evaluations: no script ran
    assert figures(moved) == figures(finished)
    # Another --data-root and an edited figure are refused by the same code before any script runs: the fast
    # tests above hold them (test_another_data_root..., the edited reports).
