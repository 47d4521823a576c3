"""Mosbach et al.'s MNIST logit-pairing table in reproduce.py (reference.ROW_TABLES): its figures against
their README, the rows' commands, the on-request PGD-40 of the suite, the row comparison, and a shortened
trial end to end. Every test runs on the CPU."""
import json
import os
import re

import pytest

import reproduce
from conftest import ROOT
from evaluation.suite import SUITES, attack_names, plan_threat_models, suite_summary
from reference import MOSBACH_SOURCE, ROW_TABLES, row_training
from reproduction import child_scripts
from reproduction.rows import compare_row, row_evaluations
from test_reproduce import refusal

# Their README's MNIST table at MOSBACH_SOURCE["commit"], copied line for line (the model links cut out): what
# reference.py's figures must equal.
THEIR_MNIST_TABLE = """
| [Plain]                     | **99.2%** | 0.0%      | 0.0%      |
| [CLP]                       | 98.8%     | 62.4%     | 4.1%      |
| [LSQ]                       | 98.8%     | 70.6%     | 5.0%      |
| [Plain + ALP]               | 98.5%     | 96.0%     | 88.9%     |
| [50% AT + ALP]              | 98.3%     | **97.2%** | **89.9%** |
| [50% AT]                    | 99.1%     | 92.7%     | 88.2%     |
| [100% AT + ALP]             | 98.4%     | 96.6%     | 85.7%     |
| [100% AT]                   | 98.9%     | 95.2%     | 88.0%     |
"""

TABLE = ROW_TABLES["mosbach-mnist"]


def test_the_rows_figures_are_their_readme_table_on_cpu():
    theirs = {}
    for line in THEIR_MNIST_TABLE.strip().splitlines():
        title, *figures = [cell.strip() for cell in line.strip("|").split("|")]
        theirs[title.strip("[]")] = tuple(float(re.sub(r"[*%]", "", figure)) for figure in figures)
    ours = {row.title: (row.clean, row.baseline, row.strongest) for row in TABLE.rows.values()}
    assert ours == theirs
    assert list(ours) == list(theirs)  # their order
    assert MOSBACH_SOURCE["commit"] in MOSBACH_SOURCE["url"] and len(MOSBACH_SOURCE["commit"]) == 40


def test_each_row_trains_with_their_settings_and_its_own_script_on_cpu():
    commands = {name: (row.script, row_training(TABLE, row)) for name, row in TABLE.rows.items()}
    for script, argv in commands.values():
        assert argv[:2] == ["lenet", "mnist"]
        assert {"--optimizer=adam", "-lr=0.001", "-b=256", "--epochs=100", "-wd=0", "-lp=null"} <= set(argv)
    assert {name: script for name, (script, _) in commands.items()} == {
        "plain": "LSQ.py", "clp": "CLP.py", "lsq": "LSQ.py", **{name: "ALP.py" for name in
                                                            ("plain-alp", "at50-alp", "at50", "at100-alp", "at100")}}
    assert {"--squeeze-weight=0", "--noise-std=0"} <= set(commands["plain"][1])
    assert {"--squeeze-weight=0.5", "--noise-std=0.5"} <= set(commands["lsq"][1])
    assert {"--pairing-weight=0.5", "--noise-std=0.5"} <= set(commands["clp"][1])
    weights = {name: tuple(next(a.split("=")[1] for a in argv if a.startswith(flag))
                           for flag in ("--clean-weight=", "--adv-weight=", "--leverage="))
               for name, (script, argv) in commands.items() if script == "ALP.py"}
    assert weights == {"plain-alp": ("1", "0", "0.5"), "at50-alp": ("0.5", "0.5", "0.5"), "at50": ("0.5", "0.5", "0"),
                       "at100-alp": ("0", "1", "0.5"), "at100": ("0", "1", "0")}
    for name in weights:  # their PGD: ε 76.5/255, 40 steps of 2.55/255
        assert {"--epsilon=0.3", "--steps=40", "--stepsize=0.01"} <= set(commands[name][1])


def test_pgd_40_runs_on_mnist_only_when_named_on_cpu():
    default = plan_threat_models("mnist", ["linf"])
    assert [label for label, _, _ in default[0][3]] == ["FGSM", "PGD-50", "PGD-100", "DeepFool", "AA"]
    ((norm, label, epsilon, attacks),) = plan_threat_models("mnist", ["linf"], ["pgd-40"])
    assert (norm, label, epsilon) == ("linf", "0.3", 0.3)
    assert attacks == [("PGD-40", "pgd-linf", {"steps": 40, "rel_stepsize": 1 / 30})]  # step 0.01 at 0.3
    assert "pgd-40" in attack_names("mnist")
    assert "pgd-40 (on request)" in suite_summary()
    with pytest.raises(ValueError, match="l2 gets none of the selected attacks"):
        plan_threat_models("mnist", ["linf", "l2"], ["pgd-40"])
    assert [a[0] for a in SUITES["cifar"]["linf"]["attacks"]].count("PGD-40") == 1  # CIFAR's own, by default


def eval_report(n, clean, attacks, worst, checks=()):
    """The part of eval.py's JSON that the row comparison reads: one ℓ∞ 0.3 table."""
    return {"evaluation": {"n": n}, "clean": {"accuracy": clean},
            "threat_models": [{"norm": "linf", "epsilon_label": "0.3",
                               "attacks": [{"label": label, "robust_accuracy": accuracy}
                                           for label, accuracy in attacks],
                               "worst_case": {"robust_accuracy": worst}}],
            "masking_checks": list(checks)}


def test_a_row_compares_clean_baseline_and_worst_case_and_names_the_masking_flags_on_cpu():
    row = TABLE.rows["clp"]  # theirs: 98.8, 62.4, 4.1
    baseline = eval_report(1000, 0.99, [("PGD-40", 0.70)], 0.70)
    flag = {"check": "autoattack-beats-white-box", "where": "ℓ∞ 0.3", "flagged": True, "kind": "flag"}
    quiet = {"check": "fgsm-beats-pgd", "where": "ℓ∞ 0.3", "flagged": False, "kind": "flag"}
    information = {"check": "autoattack-beats-white-box", "where": "ℓ1 10", "flagged": True, "kind": "information"}
    suite = eval_report(1000, 0.99, [("FGSM", 0.8), ("AA", 0.02)], 0.02, [flag, quiet, information])
    group = compare_row(TABLE, row, baseline, suite)
    clean, pgd, worst = group["rows"]
    assert (clean["reference"], clean["ours"], clean["difference"]) == (98.8, 99.0, 0.2)
    assert (pgd["label"], pgd["reference"], pgd["ours"], pgd["difference"]) == ("PGD-40", 62.4, 70.0, 7.6)
    assert pgd["outside"]  # 7.6 points against 3 standard errors of two 1,000-image figures + 1
    assert (worst["reference"], worst["ours"], worst["outside"]) == (4.1, 2.0, False)  # below theirs: stronger
    assert group["masking_flags"] == ["autoattack-beats-white-box (ℓ∞ 0.3)"]
    weaker = compare_row(TABLE, row, baseline, eval_report(1000, 0.99, [("AA", 0.3)], 0.3))
    assert weaker["rows"][2]["outside"] and weaker["masking_flags"] == []  # far above theirs: a weak evaluation


def test_eval_tables_name_the_method_where_a_checkpoint_has_no_leverage_on_cpu():
    from evaluation.report import format_table
    report = {**eval_report(10, 0.9, [("PGD-40", 0.5)], 0.5), "model": "lenet"}
    (table,) = report["threat_models"]
    table["attacks"][0].update(attack="pgd-linf", options={})
    cells = {}
    for training in ({"method": "LSQ", "squeeze_weight": 0.5, "learning_policy": "null"},
                     {"method": "ALP", "leverage": 0.5, "learning_policy": "null"},
                     {"leverage": 1, "learning_policy": "AT"}):  # a checkpoint that names no method: ALP's
        row = format_table(table, {**report, "training_args": training}).splitlines()[2]
        cells[training.get("method")] = row.split("|")[2].strip()
    assert cells == {"LSQ": "LSQ", "ALP": "0.5", None: "1"}


def test_help_lists_the_rows_with_the_commands_they_run_on_cpu():
    text = reproduce.build_parser().format_help()
    assert "mosbach-mnist: Mosbach et al.'s MNIST logit-pairing table" in text
    for name, row in TABLE.rows.items():
        assert f"{name} ({row.title}): python {row.script} {' '.join(row_training(TABLE, row))}" in text
    assert "python eval.py <row>/last.pt --norms linf --attacks pgd-40 --images 1000" in text
    (baseline, _, attacks, figures), (suite, _, suite_names, suite_figures) = row_evaluations(TABLE)
    assert (baseline, attacks, figures) == ("baseline", ["pgd-40"], [("linf", "0.3", "PGD-40")])
    assert suite == "linf" and suite_names == ["fgsm", "pgd-50", "pgd-100", "deepfool", "aa"]
    assert [label for *_, label in suite_figures] == ["FGSM", "PGD-50", "PGD-100", "DeepFool", "AA"]


def test_unknown_rows_and_rows_of_a_one_run_table_are_refused_in_one_line_on_cpu(capsys, tmp_path):
    assert "--rows: lsqq not in mosbach-mnist (its rows: plain, clp, lsq" in refusal(
        capsys, ["mosbach-mnist", "--rows", "lsqq", "--out", str(tmp_path / "r")])
    assert "--rows chooses rows of a table of rows" in refusal(capsys, ["mnist", "--rows", "clp"])
    assert not (tmp_path / "r").exists()


class Stop(Exception):
    pass


def test_choosing_rows_keeps_one_folder_and_a_trial_is_labelled_on_cpu(monkeypatch, tmp_path, capsys):
    started = []

    def no_script(script, argv, watch=None):
        started.append((script, argv))
        raise Stop
    monkeypatch.setattr(child_scripts, "run_script", no_script)
    monkeypatch.chdir(tmp_path)
    for rows in (["lsq"], ["clp", "plain"]):  # other rows, the same folder: the request names every row
        with pytest.raises(Stop):
            reproduce.main(["mosbach-mnist", "--rows", *rows, "--epochs", "2", "--images", "50"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("SHORTENED TRIAL, NOT A REPRODUCTION (2 of the reference's 100 epochs, 50 of "
                                   "the 1,000 test images): differences from the reference are expected")
    folder = tmp_path / "reproductions" / "mosbach-mnist-trial-epochs2-images50"
    request = json.loads((folder / "request.json").read_text())
    assert list(request["rows"]) == list(TABLE.rows)
    assert request["rows"]["lsq"][:2] == ["LSQ.py", "lenet"] and "--epochs=2" in request["rows"]["lsq"]
    # each run starts its first chosen row in the table's order: lsq, then plain (before clp)
    assert [(script, "--squeeze-weight=0" in argv) for script, argv in started] == [("LSQ.py", False),
                                                                                    ("LSQ.py", True)]
    assert started[0][1][started[0][1].index("--out") + 1] == os.path.join(
        "reproductions", "mosbach-mnist-trial-epochs2-images50", "lsq", "training")


@pytest.mark.slow
def test_a_shortened_row_trial_trains_evaluates_and_reports_on_cpu(tmp_path, mnist_stand_in_root):
    """The plain row for one epoch on one batch (256 images) of the MNIST stand-in, evaluated on 4 test
    images: every stage through the real scripts, then the same command finds everything done."""
    import subprocess
    import sys
    folder = tmp_path / "trial"
    argv = [sys.executable, str(ROOT / "reproduce.py"), "mosbach-mnist", "--rows", "plain", "--epochs", "1",
            "--subset", "256", "--images", "4", "--device", "cpu", "--data-root", str(mnist_stand_in_root),
            "--out", str(folder)]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((folder / "report.json").read_text())
    assert report["kind"] == "shortened trial" and report["label"].startswith("SHORTENED TRIAL")
    assert [group["epsilon"] for group in report["threat_models"]] == ["Plain"]
    for group in report["threat_models"]:
        assert [row["label"] for row in group["rows"]] == ["clean", "PGD-40", "worst case"]
        assert all(0 <= row["ours"] <= 100 for row in group["rows"])
        assert group["rows"][2]["ours"] <= group["rows"][1]["ours"]  # the suite's worst case: no weaker than PGD-40
    assert "Masking checks raised by the suite" in (folder / "report.md").read_text()
    assert "reproduce.py: estimated on cpu" in done.stdout
    again = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           timeout=300)
    assert again.returncode == 0 and "training: done" in again.stdout and "done," in again.stdout
    assert json.loads((folder / "report.json").read_text())["threat_models"] == report["threat_models"]

