"""eval.py: tables and JSON, the worst case, which samples get attacked, bad input, the threat-model check,
the masking checks, and ALP.py -> eval.py end to end.

A small model is trained for a few seconds on synthetic digits written in MNIST's on-disk format, so that
accuracies are neither 0 nor 100%. Most runs are in-process (main(argv)): a subprocess costs ~6 s of
imports; the command line itself is exercised by a few subprocess runs."""
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import evaluation
from attacks import ATTACKS
from weights import model_from_file as load_model
from conftest import assert_one_line_error, run_eval, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]
N = 40  # test images per evaluation
# One thread: on a loaded 2-core machine two OpenMP threads spin against each other (measured 90x slower).
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def eval_process(*argv):
    """eval.py in a process of its own: the command line itself, imports and exit status included."""
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), "--device", "cpu", *map(str, argv)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=SINGLE_THREAD)


def evaluate(capsys, checkpoint, data_root, tmp_path, *argv, name="out.json"):
    """A successful eval.py run in-process on N images: (stdout, the JSON report)."""
    out = tmp_path / name
    code, stdout, err = run_eval(capsys, checkpoint, "--data-root", data_root, "--n", N, "--json", out, *argv)
    assert code == 0, err
    return stdout, json.loads(out.read_text())


def deterministic_linf_suite(monkeypatch):
    """PGD without its random start: attacks then depend on nothing but their inputs, so that two runs can
    be compared sample by sample. At epsilon 0.1 the small model is neither fully robust nor fully broken."""
    suite = {"epsilons": ["0.1"], "attacks": [
        ("FGSM", "fgsm", {}),
        ("PGD-50", "pgd-linf", {"steps": 10, "rel_stepsize": 0.1, "random_start": False}),
        ("PGD-100", "pgd-linf", {"steps": 20, "rel_stepsize": 0.05, "random_start": False}),
    ]}
    monkeypatch.setitem(evaluation.SUITES["mnist"], "linf", suite)


# --- what it prints and writes ---------------------------------------------------------------------------

@pytest.mark.slow
def test_prints_a_table_per_threat_model_and_writes_every_figure_to_json(checkpoint, data_root, tmp_path):
    out = tmp_path / "report.json"
    started = time.perf_counter()
    result = eval_process(checkpoint, "--attacks", "fgsm", "pgd-50", "--n", N, "--data-root", data_root,
                      "--json", out, "--progress")
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert "| ℓ∞ | leverage | Net | LP | Nat(%) | FGSM | PGD-50 | Worst |" in result.stdout
    assert "| ℓ1 | leverage | Net | LP | Nat(%) | PGD-50 | Worst |" in result.stdout
    assert "| ℓ2 |" not in result.stdout  # the mnist l2 suite has no PGD-50
    assert "robust=" in result.stderr  # the progress bar's running accuracy

    report = json.loads(out.read_text())
    assert report["complete"] and report["dataset"] == "mnist" and report["model"] == "mnist"
    assert report["training_args"]["leverage"] == 0.5 and report["evaluation"]["n"] == N
    clean = report["clean"]
    assert clean["accuracy"] == clean["correct"] / N and 0.5 < clean["accuracy"] < 1
    tables = {(t["norm"], t["epsilon_label"]): t for t in report["threat_models"]}
    assert set(tables) == {("linf", "0.3"), ("l1", "10")}
    assert [a["label"] for a in tables["linf", "0.3"]["attacks"]] == ["FGSM", "PGD-50"]
    for table in tables.values():
        worst = table["worst_case"]["robust_accuracy"]
        for attack in table["attacks"]:
            assert attack["attacked"] == clean["correct"]  # every attack of its own, on the clean-correct
            assert attack["robust_accuracy"] == (attack["attacked"] - attack["broken"]) / N
            assert worst <= attack["robust_accuracy"] <= clean["accuracy"]
            assert 0 < attack["seconds"] < wall  # measured, and within the run that measured it
            if attack["broken"]:
                sizes = attack["mean_perturbation"]
                assert set(sizes) == {"linf", "l2", "l1"}
                assert 0 < sizes[table["norm"]] <= table["epsilon"] * (1 + 1e-5)
        row = f"| {table['epsilon_label']} | 0.5 | mnist | null | {100 * clean['accuracy']:.2f} | " + " | ".join(
            f"{100 * a['robust_accuracy']:.2f}" for a in table["attacks"]) + f" | {100 * worst:.2f} |"
        assert row in result.stdout
    # PGD at 0.3 must break something on a clean-trained model, or the evaluation is not attacking at all
    assert tables["linf", "0.3"]["attacks"][1]["broken"] > 0
    checks = {c["check"]: c for c in report["masking_checks"]}
    fgsm_only = checks["fgsm-beats-pgd"]["value"] * N  # a count of samples FGSM alone broke
    assert fgsm_only == round(fgsm_only) and 0 <= fgsm_only <= tables["linf", "0.3"]["attacks"][0]["broken"]
    assert not checks["fgsm-beats-pgd"]["flagged"]  # honest gradients: PGD-50 breaks what FGSM breaks
    assert checks["large-epsilon-sanity"]["value"] == report["sanity"]["robust_accuracy"]
    assert report["sanity"]["epsilon"] == 0.5 and report["sanity"]["norm"] == "linf"
    assert "Gradient-masking checks" in result.stdout


def test_attacks_named_at_several_norms_say_where_each_runs(capsys, checkpoint, data_root, tmp_path):
    out, report = evaluate(capsys, checkpoint, data_root, tmp_path, "--attacks", "fgsm", "pgd-50", "--n", "8")
    assert "--attacks fgsm pgd-50 runs ℓ∞ 0.3: FGSM, PGD-50; ℓ1 10: PGD-50" in out
    assert [t["norm"] for t in report["threat_models"]] == ["linf", "l1"]


def test_json_goes_beside_the_checkpoint_by_default(capsys, checkpoint, data_root):
    code, out, err = run_eval(capsys, checkpoint, "--data-root", data_root, "--n", 10, "--attacks", "fgsm")
    path = checkpoint.with_name("last.eval.n10_fgsm.json")
    assert code == 0 and json.loads(path.read_text())["complete"], err
    assert str(path) in out


def test_epsilon_overrides_the_suite_and_keeps_its_written_form(capsys, checkpoint, data_root, tmp_path):
    out, report = evaluate(capsys, checkpoint, data_root, tmp_path, "--norms", "linf", "--attacks", "fgsm",
                           "--epsilon", "8/255", "0.1")
    assert [(t["epsilon_label"], t["epsilon"]) for t in report["threat_models"]] == [("8/255", 8 / 255),
                                                                                    ("0.1", 0.1)]
    assert "| 8/255 |" in out
    assert any(c["check"] == "larger-epsilon-not-lower" for c in report["masking_checks"])


@pytest.mark.slow
def test_worst_case_only_gives_the_same_worst_case(capsys, checkpoint, data_root, tmp_path, monkeypatch):
    deterministic_linf_suite(monkeypatch)
    argv = ("--norms", "linf", "--attacks", "fgsm", "pgd-50", "pgd-100")
    _, every = evaluate(capsys, checkpoint, data_root, tmp_path, *argv, name="every.json")
    out, worst = evaluate(capsys, checkpoint, data_root, tmp_path, *argv, "--worst-case-only", name="worst.json")
    every_table, worst_table = every["threat_models"][0], worst["threat_models"][0]
    assert worst_table["worst_case"] == every_table["worst_case"]
    assert 0 < every_table["worst_case"]["robust"] < every["clean"]["correct"]  # a non-trivial comparison
    # only the worst case is reported; the masking checks read the same in both modes
    assert all(a["robust_accuracy"] is None for a in worst_table["attacks"])
    assert "| 0.1 | 0.5 | mnist | null |" in out and "| – | – | – |" in out
    def checks(report):
        return [(c["check"], c["value"]) for c in report["masking_checks"]
                if c["check"] != "large-epsilon-sanity"]
    assert checks(worst) == checks(every)


@pytest.mark.slow
def test_attacks_see_only_samples_still_robust(capsys, checkpoint, data_root, tmp_path, monkeypatch):
    """Clean-misclassified samples are never attacked; with --worst-case-only, neither are samples that an
    earlier attack of the table broke, and PGD runs before FGSM."""
    deterministic_linf_suite(monkeypatch)
    argv = ("--norms", "linf", "--attacks", "fgsm", "pgd-50", "pgd-100")
    _, every = evaluate(capsys, checkpoint, data_root, tmp_path, *argv)
    correct = every["clean"]["correct"]
    assert correct < N  # some samples are misclassified clean, so skipping them is tested
    assert [a["attacked"] for a in every["threat_models"][0]["attacks"]] == [correct] * 3

    _, worst = evaluate(capsys, checkpoint, data_root, tmp_path, *argv, "--worst-case-only", name="worst.json")
    table = worst["threat_models"][0]
    assert table["run_order"] == ["PGD-50", "PGD-100", "FGSM"]
    by_label = {a["label"]: a for a in table["attacks"]}
    remaining = correct
    for label in table["run_order"]:
        assert by_label[label]["attacked"] == remaining
        remaining -= by_label[label]["broken"]
    assert remaining == table["worst_case"]["robust"]


@pytest.mark.slow
def test_clean_predictions_are_computed_once(capsys, checkpoint, data_root, tmp_path, monkeypatch):
    calls = []
    real = evaluation.engine.clean_predictions
    monkeypatch.setattr(evaluation.engine, "clean_predictions", lambda *a: calls.append(1) or real(*a))
    evaluate(capsys, checkpoint, data_root, tmp_path, "--norms", "linf", "--attacks", "fgsm", "pgd-50",
             "--epsilon", "0.1", "0.2")
    assert len(calls) == 1


# --- bad input: one line on stderr, exit status 2 -----------------------------------------------------------

class NeedsCode:
    """Pickled by reference: loading it would import and run this module's code."""


def bad_checkpoints(tmp_path, checkpoint):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    needs_code = tmp_path / "needs_code.pt"
    torch.save({"model": {}, "meta": {"dataset": "mnist"}, "extra": NeedsCode()}, needs_code)
    model, _ = load_model(str(checkpoint))
    with torch.no_grad():
        model.state_dict()["conv.2.weight"][0, 0, 0, 0] = float("nan")
    nan_weights = write_checkpoint(tmp_path / "nan.pt", model)
    return {"missing": tmp_path / "nowhere.pt", "corrupt": corrupt, "needs code": needs_code,
            "nan weights": nan_weights}


@pytest.mark.parametrize("case, says", [("missing", "no checkpoint"), ("corrupt", ""), ("needs code", "needs code"),
                                        ("nan weights", "weights are not finite (the first such tensor is "
                                                        "conv.2.weight)")])
def test_unusable_checkpoint_is_refused_in_one_line(case, says, capsys, checkpoint, data_root, tmp_path):
    path = bad_checkpoints(tmp_path, checkpoint)[case]
    code, _, err = run_eval(capsys, path, "--data-root", data_root, "--attacks", "fgsm")
    assert_one_line_error(code, err, says)
    assert str(path) in err


def test_a_missing_best_checkpoint_is_refused_naming_what_its_folder_holds(capsys, checkpoint, data_root, tmp_path):
    """A quick trial whose model gave one class at every validation leaves last.pt and no best_*.pt."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(checkpoint.read_bytes())
    code, _, err = run_eval(capsys, run / "best_robust.pt", "--data-root", data_root, "--attacks", "fgsm")
    assert_one_line_error(code, err, f"no checkpoint at {run / 'best_robust.pt'} (that folder holds last.pt)")


@pytest.mark.parametrize("argv, says", [
    (["--attacks", "fgsm", "bim"], "invalid choice: 'bim'"),
    (["--attacks", "pgd-10"], "pgd-10: not in the mnist suite"),  # a cifar column
    (["--norms", "l3"], "invalid choice: 'l3'"),
    (["--norms", "l2", "--attacks", "fgsm"], "fgsm: not in the mnist suite for l2"),
    (["--norms", "linf", "l2", "--attacks", "fgsm"], "l2 gets none of the selected attacks (fgsm)"),
    (["--epsilon", "0"], "must be a positive number"),
    (["--epsilon", "-0.1"], "must be a positive number"),
    (["--epsilon", "1/0"], "must be a positive number"),
    (["--epsilon", "inf"], "must be a positive number"),
    (["--epsilon", "nan"], "must be a positive number"),
    (["--n", "0"], "must be a positive integer"),
    (["--n", "-5"], "must be a positive integer"),
    (["-b", "0"], "must be a positive integer"),
])
def test_bad_option_exits_2_in_one_line(argv, says, capsys, checkpoint, data_root):
    assert_one_line_error(*run_eval(capsys, checkpoint, "--data-root", data_root, *argv)[::2], says)


def test_data_that_cannot_be_loaded_exits_2_in_one_line(capsys, checkpoint, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    code, _, err = run_eval(capsys, checkpoint, "--data-root", not_a_folder, "--attacks", "fgsm")
    assert_one_line_error(code, err, str(not_a_folder))


@pytest.mark.slow
def test_bad_input_from_the_command_line_prints_no_traceback(checkpoint, data_root, tmp_path):
    result = eval_process(bad_checkpoints(tmp_path, checkpoint)["needs code"], "--data-root", data_root)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "test_eval.NeedsCode, which needs code to load" in result.stderr


# --- the threat-model check -------------------------------------------------------------------------------

class LeavesTheBall:
    """A broken attack: steps 2 epsilon (linf) against the gradient's sign, or out of [0, 1]."""

    def __init__(self, epsilon, out_of_range=False):
        self.epsilon, self.norm, self.out_of_range = epsilon, "linf", out_of_range

    def __call__(self, model, x, y):
        if self.out_of_range:
            return x + self.epsilon * (x > 0.5)  # within epsilon, but bright pixels go above 1
        return (x + 2 * self.epsilon * torch.where(x > 0.5, -1.0, 1.0)).clamp(0, 1)


@pytest.mark.parametrize("out_of_range, says", [(False, "left the linf ball"), (True, "outside [0, 1]")])
def test_an_attack_leaving_the_threat_model_stops_the_evaluation(out_of_range, says, capsys, checkpoint,
                                                                  data_root, tmp_path, monkeypatch):
    model, _ = load_model(str(checkpoint))
    images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    message = f"Sneaky {'returned pixels ' * out_of_range}{says}"
    monkeypatch.setitem(ATTACKS, "sneaky", lambda epsilon: LeavesTheBall(epsilon, out_of_range))
    job = evaluation.Job("Sneaky", "sneaky", {}, "linf", 0.1, torch.arange(8), seed=0, model=model)
    with pytest.raises(evaluation.ThreatModelViolation, match=re.escape(message)):
        evaluation.run_unit(job, 0, images, torch.zeros(8, dtype=torch.long), batch_size=4)

    monkeypatch.setitem(ATTACKS, "fgsm", lambda epsilon: LeavesTheBall(epsilon, out_of_range))
    code, _, err = run_eval(capsys, checkpoint, "--data-root", data_root, "--n", N, "--json", tmp_path / "out.json",
                            "--attacks", "fgsm")
    assert code == 1
    assert "attack bug" in err and "FGSM" in err and says in err and len(err.strip().splitlines()) == 1
    assert not json.loads((tmp_path / "out.json").read_text())["complete"]


def test_an_attack_within_the_ball_passes_the_check_at_its_edge():
    x = torch.full((4, 1, 28, 28), 0.5)
    for norm, epsilon in (("linf", 0.3), ("l2", 2.0), ("l1", 10.0)):
        delta = torch.randn_like(x)
        delta = delta / evaluation.flat_norm(delta, norm).view(-1, 1, 1, 1) * epsilon
        evaluation.check_in_threat_model("PGD", x, x + delta, norm, epsilon)  # radius exactly epsilon: fine


# --- gradient-masking checks ------------------------------------------------------------------------------

def masks(n, broken):
    out = torch.zeros(n, dtype=torch.bool)
    out[list(broken)] = True
    return out


LINF_TABLE = {"norm": "linf", "epsilon": 0.3, "epsilon_label": "0.3", "worst_case": {"robust_accuracy": 0.5},
              "attacks": [{"label": "FGSM", "attack": "fgsm"}, {"label": "PGD-50", "attack": "pgd-linf"},
                          {"label": "DeepFool", "attack": "deepfool-linf"}, {"label": "AA", "attack": "aa-linf"}]}


def linf_checks(broken_by, n, sanity=None):
    return {c.check: c.as_json() for c in evaluation.masking_checks([LINF_TABLE], [broken_by], sanity, n)}


def test_masking_checks_flag_fgsm_beating_pgd_and_autoattack_beating_white_box():
    n = 100
    broken_by = {"FGSM": masks(n, range(0, 14)),     # 4 samples (4%) no PGD broke
                 "PGD-50": masks(n, range(0, 10)),
                 "DeepFool": masks(n, range(0, 11)),
                 "AA": masks(n, range(0, 26))}       # 12 (12%) nothing else broke
    sanity = {"norm": "linf", "epsilon": 0.5, "epsilon_label": "0.5", "label": "PGD-20", "robust_accuracy": 0.3,
              "grey_image_accuracy": 0.1}

    masked = linf_checks(broken_by, n, sanity)
    assert masked["fgsm-beats-pgd"]["value"] == 0.04 and masked["fgsm-beats-pgd"]["flagged"]
    assert masked["autoattack-beats-white-box"]["value"] == 0.12
    assert masked["autoattack-beats-white-box"]["flagged"] and masked["large-epsilon-sanity"]["flagged"]
    assert masked["autoattack-beats-white-box"]["chance"] < evaluation.SIGNIFICANCE

    honest = {**broken_by, "FGSM": masks(n, range(0, 5)), "AA": masks(n, range(0, 12))}
    assert not any(c["flagged"] for c in linf_checks(honest, n, {**sanity, "robust_accuracy": 0.0}).values())
    # a model that predicts one class everywhere (13% of the labels) is useless, not masked
    constant = {**sanity, "robust_accuracy": 0.13, "grey_image_accuracy": 0.13}
    assert not linf_checks(honest, n, constant)["large-epsilon-sanity"]["flagged"]


def test_a_share_check_needs_more_samples_than_chance_gives_a_healthy_model():
    """One rule for every n: the same 9% AutoAttack lead is within what a healthy model's share gives by
    chance on 100 samples, and far beyond it on 1,000; one sample of 32 never fires."""
    healthy = evaluation.HEALTHY_SHARE["autoattack-beats-white-box"]["linf"]

    def aa_lead(n, count):
        broken_by = {"FGSM": masks(n, []), "PGD-50": masks(n, range(10)), "DeepFool": masks(n, range(10)),
                     "AA": masks(n, range(10 + count))}
        return linf_checks(broken_by, n)["autoattack-beats-white-box"]

    small, large, single = aa_lead(100, 9), aa_lead(1000, 90), aa_lead(32, 1)
    assert small["value"] == large["value"] == 0.09 > healthy
    assert not small["flagged"] and large["flagged"] and not single["flagged"]
    assert large["chance"] < evaluation.SIGNIFICANCE <= small["chance"]
    assert "chance" in small["message"] and "gradients may be masked" not in small["message"]
    assert "gradients may be masked" in large["message"]
    assert aa_lead(100, 0)["message"].endswith(f"a healthy {100 * healthy:.2f}% gives as many with a chance of 100%")
    # the flag needs fewer extra samples, as a share, the more samples there are
    def smallest_flagged_share(n):
        return next(k for k in range(n + 1) if aa_lead(n, k)["flagged"]) / n
    assert smallest_flagged_share(32) > smallest_flagged_share(100) > smallest_flagged_share(1000) > healthy


def test_the_readme_states_how_many_samples_flag_autoattack():
    """The README's counts follow from HEALTHY_SHARE and SIGNIFICANCE; change those and this says so."""
    healthy = evaluation.HEALTHY_SHARE["autoattack-beats-white-box"]["linf"]
    def fewest_flagged(n):  # the chance falls as the count grows: bisect
        low, high = 0, n
        while low < high:
            middle = (low + high) // 2
            if evaluation.chance_of_at_least(middle, n, healthy) < evaluation.SIGNIFICANCE:
                high = middle
            else:
                low = middle + 1
        return low
    counts = [fewest_flagged(n) for n in (32, 100, 1000, 10000)]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert (f"{counts[0]} or more of 32 samples, {counts[1]} of 100, {counts[2]} of 1,000, "
            f"{counts[3]:,} of 10,000") in readme
    assert f"{100 * healthy:g}% for AutoAttack" in readme


def test_chance_of_at_least_is_the_binomial_tail():
    for n, share in ((10, 0.05), (37, 0.3), (200, 0.005)):
        for count in (0, 1, 3, n):
            exact = sum(math.comb(n, k) * share ** k * (1 - share) ** (n - k) for k in range(count, n + 1))
            assert evaluation.chance_of_at_least(count, n, share) == pytest.approx(exact, rel=1e-9)
    assert evaluation.chance_of_at_least(600, 10000, 0.05) < 1e-4  # large n: finite, no overflow
    assert evaluation.chance_of_at_least(1, 5, 0.0) == 0.0


def test_autoattack_beating_pgd_and_slide_at_l1_is_information_not_a_flag():
    """APGD-L1 outruns PGD-ℓ1 and SLIDE on healthy models too; the same 8% lead flags at ℓ∞ (above)."""
    n = 100
    table = {"norm": "l1", "epsilon": 10.0, "epsilon_label": "10", "worst_case": {"robust_accuracy": 0.5},
             "attacks": [{"label": "PGD-50", "attack": "pgd-l1"}, {"label": "SLIDE", "attack": "slide"},
                         {"label": "AA", "attack": "aa-l1"}]}
    broken_by = {"PGD-50": masks(n, range(0, 10)), "SLIDE": masks(n, range(0, 12)), "AA": masks(n, range(0, 20))}
    (check,) = [c.as_json() for c in evaluation.masking_checks([table], [broken_by], None, n)]
    assert check["check"] == "autoattack-beats-white-box" and check["value"] == 0.08
    assert check["kind"] == "information" and check["flagged"] is False and "not a flag" in check["rule"]
    printed = evaluation.format_checks([check])
    assert "[info] autoattack-beats-white-box at ℓ1 10" in printed and "flag(s)" not in printed


def test_larger_epsilon_with_higher_accuracy_is_flagged():
    tables = [{"norm": "linf", "epsilon": e, "epsilon_label": str(e), "attacks": [],
               "worst_case": {"robust_accuracy": acc}} for e, acc in ((0.1, 0.4), (0.2, 0.45))]
    sanity = {"norm": "linf", "epsilon": 0.5, "epsilon_label": "0.5", "label": "PGD-20", "robust_accuracy": 0.0,
              "grey_image_accuracy": 0.1}
    checks = {c.check: c for c in evaluation.masking_checks(tables, [{}, {}], sanity, 100)}
    assert checks["larger-epsilon-not-lower"].flagged


# --- the suite as data ------------------------------------------------------------------------------------

def test_each_selection_name_selects_its_own_columns_of_registered_attacks():
    assert evaluation.cli_name("C&W") == "cw" and evaluation.cli_name("PGD-50") == "pgd-50"
    for family in evaluation.SUITES:
        for name in evaluation.attack_names(family):
            plan = evaluation.plan_threat_models(family, attack_names=[name])
            columns = [attack for _, _, _, attacks in plan for attack in attacks]
            assert columns and all(evaluation.cli_name(label) == name and registered in ATTACKS
                                   for label, registered, _ in columns)
    with pytest.raises(ValueError, match="pgd-10: not in the mnist suite"):
        evaluation.plan_threat_models("mnist", attack_names=["pgd-10"])


# --- with the real attacks and ALP.py ---------------------------------------------------------------------

def few_iterations(options):
    return {**options, **{k: min(v, 5) for k, v in options.items() if k in ("steps", "binary_search_steps")}}


@pytest.mark.slow
def test_every_attack_of_the_suite_runs_within_its_threat_model(capsys, checkpoint, data_root, tmp_path,
                                                                 monkeypatch):
    """The whole mnist suite with few iterations (plumbing and the threat-model check, not strength), at
    epsilons where AutoAttack's first attack breaks everything, so that Square's 5000 queries never run."""
    for norm, epsilon in (("linf", "0.3"), ("l2", "4"), ("l1", "30")):
        attacks = [(label, name, few_iterations(options))
                   for label, name, options in evaluation.SUITES["mnist"][norm]["attacks"]]
        monkeypatch.setitem(evaluation.SUITES["mnist"], norm, {"epsilons": [epsilon], "attacks": attacks})
    out, report = evaluate(capsys, checkpoint, data_root, tmp_path)
    assert [(t["norm"], [a["label"] for a in t["attacks"]]) for t in report["threat_models"]] == [
        ("linf", ["FGSM", "PGD-50", "PGD-100", "DeepFool", "AA"]), ("l2", ["PGD-100", "DeepFool", "C&W", "AA"]),
        ("l1", ["PGD-50", "SLIDE", "AA"])]
    assert "| ℓ2 | leverage | Net | LP | Nat(%) | PGD-100 | DeepFool | C&W | AA | Worst |" in out
    for table in report["threat_models"]:
        assert all(table["worst_case"]["robust_accuracy"] <= a["robust_accuracy"] for a in table["attacks"])
    assert {c["check"] for c in report["masking_checks"]} == {
        "constant-predictor", "fgsm-beats-pgd", "autoattack-beats-white-box", "large-epsilon-sanity"}


@pytest.mark.skipif(not os.environ.get("EVAL_FULL_SUITE"), reason="~1 min; set EVAL_FULL_SUITE=1 to run")
def test_the_full_default_suite_runs(checkpoint, data_root, tmp_path):
    out = tmp_path / "full.json"
    result = eval_process(checkpoint, "--n", 8, "--data-root", data_root, "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [(t["norm"], [a["label"] for a in t["attacks"]]) for t in report["threat_models"]] == [
        ("linf", ["FGSM", "PGD-50", "PGD-100", "DeepFool", "AA"]), ("l2", ["PGD-100", "DeepFool", "C&W", "AA"]),
        ("l1", ["PGD-50", "SLIDE", "AA"])]
    for table in report["threat_models"]:
        assert all(table["worst_case"]["robust_accuracy"] <= a["robust_accuracy"] for a in table["attacks"])


@pytest.mark.slow
def test_evaluates_the_checkpoint_alp_writes(data_root, tmp_path):
    out = tmp_path / "runs"
    train = subprocess.run([sys.executable, str(ROOT / "tests" / "alp_process.py"), "mnist", "mnist", "--epochs",
                            "1", "--subset", "200", "--device", "cpu", "--data-root", str(data_root),
                            "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, env=SINGLE_THREAD)
    assert train.returncode == 0, train.stderr
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    result = eval_process(run / "last.pt", "--n", 20, "--attacks", "fgsm", "pgd-50", "--data-root", data_root)
    assert result.returncode == 0, result.stderr
    assert "| ℓ∞ | leverage | Net | LP | Nat(%) | FGSM | PGD-50 | Worst |" in result.stdout
    report = json.loads((run / "last.eval.n20_fgsm+pgd-50.json").read_text())
    assert report["complete"] and report["model"] == "mnist" and report["dataset"] == "mnist"
