"""evaluation.py as a library, all on the CPU: evaluate() on a plain torch model, the same figures as the
CLI, input validation, per-attack random streams, the constant-predictor, sweep and ε-size checks, the
default batch size and AutoAttack's version."""
import copy
import json
import re

import pytest
import torch
import torch.nn as nn

import eval as eval_script
import evaluation
from evaluation.command_line import parse_sweep
from attacks import ATTACKS
from weights import model_from_file as load_model
from data import load_split
from conftest import train_on_digits

CPU = torch.device("cpu")
N = 24
SELECTION = {"norms": ["linf"], "attacks": ["fgsm", "pgd-50"], "epsilons": ["0.1"]}


@pytest.fixture(scope="module")
def plain_model():
    """Not one of ours: a linear classifier on the flattened [0, 1] image, trained on the digits."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).to(CPU)
    return train_on_digits(model, epochs=5).eval()


@pytest.fixture(scope="module")
def digits(data_root):  # noqa: F811
    images, labels = load_split("mnist", str(data_root), train=False)
    return images[:N].to(CPU), labels[:N].to(CPU)


def test_evaluate_takes_a_plain_torch_model_and_returns_the_json_report(plain_model, digits):
    images, labels = digits
    report = evaluation.evaluate(plain_model, images, labels, dataset="mnist", **SELECTION, batch_size=8)
    assert report["complete"] and report["model"] == "Sequential" and report["dataset"] == "mnist"
    with torch.no_grad():
        expected_clean = (plain_model(images.float() / 255).argmax(1) == labels).float().mean().item()
    assert report["clean"]["accuracy"] == pytest.approx(expected_clean) and 0.3 < expected_clean < 1
    (table,) = report["threat_models"]
    assert [a["label"] for a in table["attacks"]] == ["FGSM", "PGD-50"]
    assert table["worst_case"]["robust_accuracy"] <= min(a["robust_accuracy"] for a in table["attacks"])
    assert table["attacks"][1]["broken"] > 0  # the attack reaches a linear model
    assert {c["check"] for c in report["masking_checks"]} == {"constant-predictor", "fgsm-beats-pgd",
                                                               "large-epsilon-sanity"}
    json.dumps(report)  # what the CLI writes: plain JSON types only

    # float images in [0, 1] are the same images
    as_float = evaluation.evaluate(plain_model, images.float() / 255, labels, dataset="mnist", **SELECTION,
                                   batch_size=8)
    assert as_float["threat_models"][0]["worst_case"] == table["worst_case"]


@pytest.mark.slow
def test_evaluate_gives_the_figures_of_the_command_line(checkpoint, data_root, digits, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cli.json"
    eval_script.main([str(checkpoint), "--device", "cpu", "--data-root", str(data_root), "--n", str(N), "-b", "8",
                      "--json", str(out),
                      "--norms", "linf", "--attacks", "fgsm", "pgd-50", "--epsilon", "0.1"])
    cli = json.loads(out.read_text())
    model, _ = load_model(str(checkpoint))
    model = model.to(memory_format=torch.channels_last)  # as eval.py evaluates on the CPU: the same float rounding
    api = evaluation.evaluate(model, *digits, dataset="mnist", **SELECTION, batch_size=8)

    def figures(report):
        return ([(a["label"], a["attacked"], a["broken"], a["mean_perturbation"]) for t in report["threat_models"]
                 for a in t["attacks"]], [t["worst_case"] for t in report["threat_models"]],
                report["clean"], report["sanity"]["broken"],
                [(c["check"], c["value"]) for c in report["masking_checks"]])
    assert figures(api) == figures(cli)
    assert 0 < cli["threat_models"][0]["worst_case"]["robust"] < cli["clean"]["correct"]  # not a trivial match


@pytest.mark.parametrize("images, labels, dataset, says", [
    (torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), "mnist", "images must be N x 1 x 28 x 28"),
    (torch.zeros(4, 28, 28), torch.zeros(4, dtype=torch.long), "mnist", "images must be N x 1 x 28 x 28"),
    (torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long), "mnist", "labels must be a vector of 4"),
    (torch.zeros(4, 1, 28, 28), torch.zeros(4), "mnist", "labels must be integer"),
    (torch.zeros(4, 1, 28, 28), torch.full((4,), 10), "mnist", "labels must lie in 0..9"),
    (torch.full((4, 1, 28, 28), 255.0), torch.zeros(4, dtype=torch.long), "mnist", "must lie in [0, 1]"),
    (torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), "imagenet", "dataset must be one of"),
])
def test_evaluate_refuses_inputs_that_are_not_the_data_sets_images(images, labels, dataset, says, plain_model):
    images, labels = images.to(CPU), labels.to(CPU)
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
        evaluation.evaluate(plain_model, images, labels, dataset=dataset, norms=["linf"], attacks=["fgsm"])


def test_an_attacks_result_does_not_depend_on_the_other_attacks_or_tables_selected(plain_model, digits,
                                                                                    monkeypatch):
    """PGD-50 at linf 0.15 breaks the same samples alone and after other tables and attacks have drawn from
    the random generators. It is cut to one short step from its random start, so that where it starts
    decides what it breaks (other seeds break other samples: one sample's fate may stay the same)."""
    linf = evaluation.SUITES["mnist"]["linf"]
    short = [("PGD-50", "pgd-linf", {"steps": 1, "rel_stepsize": 1.0}) if label == "PGD-50" else (label, name, o)
             for label, name, o in linf["attacks"]]
    monkeypatch.setitem(evaluation.SUITES["mnist"], "linf", {**linf, "attacks": short})
    masks = {}
    real = evaluation.engine.Table.add
    def recording(table, job, outcome, n):
        real(table, job, outcome, n)
        masks[run, table.norm, table.epsilon_label] = table.broken_by
    monkeypatch.setattr(evaluation.engine.Table, "add", recording)
    run = "alone"
    evaluation.evaluate(plain_model, *digits, dataset="mnist", norms=["linf"], attacks=["pgd-50"],
                        epsilons=["0.15"], batch_size=8)
    run = "in a larger selection"
    torch.rand(1000)  # and whatever state the caller's generator is in
    evaluation.evaluate(plain_model, *digits, dataset="mnist", norms=["linf", "l1"],
                        attacks=["fgsm", "pgd-100", "pgd-50"], epsilons=["0.05", "0.15"], batch_size=8)
    alone = masks["alone", "linf", "0.15"]["PGD-50"]
    assert 0 < alone.sum() < len(alone)  # a mask that could differ
    assert torch.equal(masks["in a larger selection", "linf", "0.15"]["PGD-50"], alone)
    assert ("in a larger selection", "l1", "0.05") in masks  # other tables did run first
    for run in ("seed 1", "seed 2", "seed 3"):
        evaluation.evaluate(plain_model, *digits, dataset="mnist", norms=["linf"], attacks=["pgd-50"],
                            epsilons=["0.15"], batch_size=8, seed=int(run[-1]))
    assert any(not torch.equal(masks[run, "linf", "0.15"]["PGD-50"], alone) for run in ("seed 1", "seed 2", "seed 3"))


def test_each_attack_gets_its_own_stream_and_the_callers_generator_is_left_alone():
    seeds = {evaluation.stream_seed(0, norm, eps, label) for norm in ("linf", "l2") for eps in (0.1, 0.2)
             for label in ("PGD-50", "PGD-100")}
    assert len(seeds) == 8
    assert evaluation.stream_seed(0, "linf", 8 / 255, "PGD-10") == evaluation.stream_seed(0, "linf", 8 / 255, "PGD-10")
    assert evaluation.stream_seed(1, "linf", 0.1, "PGD-10") != evaluation.stream_seed(0, "linf", 0.1, "PGD-10")
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with evaluation.random_stream(123, CPU):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected) and not torch.equal(inside, expected)


class Constant(nn.Module):
    """Gives class 3 to everything, whatever the image."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.eye(10)[3])
        self.weight = nn.Parameter(torch.zeros(10, 28 * 28))

    def forward(self, x):
        return x.flatten(1) @ self.weight.t() + self.bias


def test_a_constant_predictor_is_flagged_and_a_trained_model_is_not(plain_model, digits):
    constant = evaluation.evaluate(Constant().to(CPU), *digits, dataset="mnist", norms=["linf"], attacks=["fgsm"])
    check = next(c for c in constant["masking_checks"] if c["check"] == "constant-predictor")
    assert check["flagged"] and check["value"] == 1.0 and "class 3" in check["message"]
    assert "[FLAG] constant-predictor" in evaluation.format_checks(constant["masking_checks"])
    trained = evaluation.evaluate(plain_model, *digits, dataset="mnist", norms=["linf"], attacks=["fgsm"])
    assert not next(c for c in trained["masking_checks"] if c["check"] == "constant-predictor")["flagged"]


def test_sweep_checks_flag_a_rising_curve_and_one_above_the_grey_image_bound():
    sweep = {"norm": "linf", "epsilons": [0, 0.25, 0.5], "epsilon_labels": ["0", "0.25", "0.5"],
             "grey_image_bound": [0.9, 0.8, 0.1],
             "curves": [{"label": "PGD-50", "robust_accuracy": [0.9, 0.3, 0.0]},     # honest
                        {"label": "PGD-100", "robust_accuracy": [0.9, 0.3, 0.35]}]}  # rises, and above grey
    checks = {(c.check, c.where.split()[0]): c for c in evaluation.sweep_checks(sweep)}
    assert not checks["sweep-accuracy-rises", "PGD-50"].flagged
    assert not checks["sweep-above-grey-bound", "PGD-50"].flagged
    assert checks["sweep-accuracy-rises", "PGD-100"].flagged
    above = checks["sweep-above-grey-bound", "PGD-100"]
    assert above.flagged and above.value == pytest.approx(0.25) and above.epsilon == 0.5


def test_the_grey_image_bound_counts_only_samples_out_of_reach_or_of_the_grey_class(plain_model, digits):
    images, labels = digits
    correct = evaluation.clean_predictions(plain_model, images, 8) == labels
    grey = evaluation.grey_image_class(plain_model, images)
    at_zero, at_half = evaluation.grey_image_bound(plain_model, images, labels, correct, "linf", [0, 0.5], 8)
    assert at_zero == correct.float().mean().item()  # nothing is within 0 of grey
    assert at_half == (correct & (labels == grey)).float().mean().item()  # everything is within 0.5


@pytest.mark.parametrize("norm, epsilon, warns", [("linf", 0.99, False), ("linf", 1.0, True),
                                                  ("l2", 27.9, False), ("l2", 28.0, True),
                                                  ("l1", 783.0, False), ("l1", 784.0, True)])
def test_epsilons_beyond_the_image_diameter_are_warned_about(norm, epsilon, warns):
    warnings = evaluation.epsilon_warnings([(norm, str(epsilon), epsilon)], (1, 28, 28))
    assert len(warnings) == warns


@pytest.mark.parametrize("version", ["standard", "plus", "rand"])
def test_the_autoattack_version_reaches_the_adapter_and_the_table_header(version):
    ((_, _, _, attacks),) = evaluation.plan_threat_models("mnist", ["linf"], ["aa"], aa_version=version)
    ((label, name, options),) = attacks
    attack = evaluation.units.build_attack(name, 0.3, options, seed=7)
    assert isinstance(attack, type(ATTACKS["aa-linf"](0.3))) and (attack.version, attack.seed) == (version, 7)
    record = {"label": label, "attack": name, "options": options, "robust_accuracy": 0.5}
    table = {"norm": "linf", "epsilon_label": "0.3", "attacks": [record], "worst_case": {"robust_accuracy": 0.5}}
    header = evaluation.format_table(table, {"model": "m", "clean": {"accuracy": 0.9}}).splitlines()[0]
    assert header.endswith(f"| {'AA' if version == 'standard' else 'AA-' + version} | Worst |")


def test_the_two_families_suites_share_their_attack_definitions():
    cifar, mnist = evaluation.SUITES["cifar"], evaluation.SUITES["mnist"]
    for norm in ("linf", "l2", "l1"):
        shared = [a for a in cifar[norm]["attacks"] if not a[1].startswith("pgd-") or norm == "l1"]
        assert all(a in mnist[norm]["attacks"] for a in shared)
    assert cifar["linf"]["epsilons"] == ["8/255", "16/255"] and mnist["linf"]["epsilons"] == ["0.3"]



@pytest.mark.parametrize("text, expected", [("0:0.5:3", [("0", 0.0), ("0.25", 0.25), ("0.5", 0.5)]),
                                            ("0:16/255:3", [("0/255", 0.0), ("8/255", 8 / 255), ("16/255", 16 / 255)]),
                                            ("0.1, 0.2", [("0.1", 0.1), ("0.2", 0.2)])])
def test_sweep_epsilons_are_a_range_or_a_list(text, expected):
    parsed = parse_sweep(text)
    assert [label for label, _ in parsed] == [label for label, _ in expected]
    assert [value for _, value in parsed] == pytest.approx([value for _, value in expected])


def test_a_sweep_below_zero_is_refused():
    with pytest.raises(ValueError, match="at least 0"):
        parse_sweep("-0.1,0.1")


# --- faulty models and misuse: one clear error, never figures ---------------------------------------------

class Faulty(nn.Module):
    """Another model's logits, NaN for every third image, or for every image off the 8-bit grid (an
    adversarial example: the clean images are uint8 / 255)."""

    def __init__(self, model, where):
        super().__init__()
        self.model, self.where = model, where

    def forward(self, x):
        logits = self.model(x).clone()
        if self.where == "every third image":
            logits[::3] = float("nan")
        else:
            off_grid = ((x * 255 - (x * 255).round()).abs().flatten(1).amax(1) > 1e-3)
            logits[off_grid] = float("nan")
        return logits


def test_nan_logits_on_clean_images_are_refused_saying_how_many(plain_model, digits):
    with pytest.raises(ValueError, match=r"logits are not finite \(NaN or inf\) for 8 of 24 images"):
        evaluation.evaluate(Faulty(plain_model, "every third image"), *digits, dataset="mnist", **SELECTION,
                            batch_size=N)  # one batch: 8 of its 24


def test_nan_logits_on_adversarial_examples_count_as_broken(plain_model, digits):
    report = evaluation.evaluate(Faulty(plain_model, "off the 8-bit grid"), *digits, dataset="mnist",
                                 norms="linf", attacks="fgsm", epsilons=0.1, batch_size=8)
    (fgsm,) = report["threat_models"][0]["attacks"]
    assert fgsm["attacked"] == report["clean"]["correct"] > 0 and fgsm["broken"] == fgsm["attacked"]
    assert report["sanity"]["grey_image_class"] == -1 and report["sanity"]["grey_image_accuracy"] == 0  # 127.5/255


@pytest.mark.parametrize("classes", [5, 20])
def test_logits_for_another_number_of_classes_are_refused_naming_both(classes, digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, classes)).to(CPU)
    with pytest.raises(ValueError, match=f"{classes} per image, but the data set has 10 classes"):
        evaluation.evaluate(model, *digits, dataset="mnist", **SELECTION)


def test_one_norm_attack_or_epsilon_alone_reads_as_a_list_of_one(plain_model, digits):
    alone = evaluation.evaluate(plain_model, *digits, dataset="mnist", norms="linf", attacks="fgsm",
                                epsilons=0.1, batch_size=8)
    listed = evaluation.evaluate(plain_model, *digits, dataset="mnist", norms=["linf"], attacks=["fgsm"],
                                 epsilons=["0.1"], batch_size=8)
    assert [(t["norm"], t["epsilon"]) for t in alone["threat_models"]] == [("linf", 0.1)]
    assert [t["worst_case"] for t in alone["threat_models"]] == [t["worst_case"] for t in listed["threat_models"]]


@pytest.mark.parametrize("change, error, says", [
    ({"batch_size": -4}, ValueError, "batch_size must be a positive integer"),
    ({"batch_size": 2.5}, ValueError, "batch_size must be a positive integer"),
    ({"model": "bf16"}, TypeError, "weights are torch.bfloat16: the attacks work in float32"),
    ({"model": "a function"}, TypeError, "must be a torch.nn.Module, not function"),
])
def test_misuse_of_the_api_gets_one_clear_error(change, error, says, plain_model, digits):
    model = {"bf16": lambda: copy.deepcopy(plain_model).bfloat16(), "a function": lambda: lambda x: x,
             None: lambda: plain_model}[change.get("model")]()
    options = {**SELECTION, "batch_size": change.get("batch_size", 8)}
    with pytest.raises(error, match=re.escape(says)):
        evaluation.evaluate(model, *digits, dataset="mnist", **options)


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_gives_the_callers_model_back_in_its_own_mode(training, plain_model, digits):
    model = copy.deepcopy(plain_model).train(training)
    model[1].train(not training)  # a submodule in the other mode stays so too
    evaluation.evaluate(model, *digits, dataset="mnist", norms="linf", attacks="fgsm", epsilons=0.1)
    assert model.training == training and model[1].training == (not training)


class WritesIntoItsInput(nn.Module):
    """A faulty forward: it zeroes its input in place, then returns a tuple instead of the logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        logits = self.model(x)
        x.zero_()
        return logits, None


@pytest.mark.parametrize("as_floats", [False, True])
def test_a_forward_that_writes_into_its_input_never_reaches_the_callers_images(as_floats, plain_model, digits):
    images, labels = digits
    images = images.float() / 255 if as_floats else images
    before = images.clone()
    with pytest.raises(ValueError, match="the model returns a tuple, not a tensor of logits"):
        evaluation.evaluate(WritesIntoItsInput(plain_model), images, labels, dataset="mnist", **SELECTION)
    assert torch.equal(images, before)


def test_one_image_of_a_good_model_is_no_constant_predictor(plain_model, digits):
    """A model that predicts its one image's class gives that class 100% of the predictions: chance."""
    images, labels = digits
    report = evaluation.evaluate(plain_model, images[:1], labels[:1], dataset="mnist", **SELECTION)
    check = next(c for c in report["masking_checks"] if c["check"] == "constant-predictor")
    assert check["value"] == 1.0 and not check["flagged"] and check["chance"] > 0.01


def test_the_constant_predictor_check_needs_more_samples_than_chance_gives():
    """Ten classes, labels balanced unless given: 4 of 4 in one class is a 1-in-10,000 event for a model that
    spreads its predictions like the labels, 2 of 2 is not."""
    assert not evaluation.constant_predictor_check(torch.tensor([0, 2, 0, 0, 0, 0, 0, 0, 0, 0])).flagged
    assert evaluation.constant_predictor_check(torch.tensor([0, 4, 0, 0, 0, 0, 0, 0, 0, 0])).flagged
    same_labels = torch.tensor([0, 4, 0, 0, 0, 0, 0, 0, 0, 0])  # the four images are all of class 1
    assert not evaluation.constant_predictor_check(torch.tensor([0, 4, 0, 0, 0, 0, 0, 0, 0, 0]), same_labels).flagged


def test_a_transfer_between_identical_weights_is_named_a_white_box_attack(plain_model, digits):
    report = evaluation.evaluate_transfer(plain_model, copy.deepcopy(plain_model), *digits, dataset="mnist",
                                          **SELECTION, batch_size=8)
    assert any("the source and the target hold the same weights" in w for w in report["warnings"])
    other = copy.deepcopy(plain_model)
    with torch.no_grad():
        other[1].bias.add_(1e-3)
    report = evaluation.evaluate_transfer(plain_model, other, *digits, dataset="mnist", **SELECTION, batch_size=8)
    assert not report["warnings"]


def test_a_transfer_sizes_its_units_on_the_source_the_attacks_run_on(plain_model, digits, monkeypatch):
    """Without a batch size, the width is measured on the network attacked (a larger source would otherwise
    overflow a GPU's memory); on the CPU the width stays CPU_BATCH_SIZE whichever network is probed."""
    sized_on = []

    def recording(device, model, images, processes=1):
        sized_on.append(model)
        return evaluation.CPU_BATCH_SIZE

    monkeypatch.setattr(evaluation.engine, "default_batch_size", recording)
    target = copy.deepcopy(plain_model)
    evaluation.evaluate_transfer(plain_model, target, *digits, dataset="mnist", **SELECTION)
    assert sized_on == [plain_model]
    evaluation.evaluate(target, *digits, dataset="mnist", **SELECTION)
    assert sized_on == [plain_model, target]


def test_a_units_key_names_the_weights_and_images_it_was_computed_on(plain_model, digits, tmp_path, monkeypatch):
    """Through the API too: a store's units of one model are not taken for another's, nor for other images."""
    images, labels = digits
    store = evaluation.UnitStore(str(tmp_path / "units"))
    first = evaluation.evaluate(plain_model, images, labels, dataset="mnist", **SELECTION, batch_size=8,
                                runner=evaluation.Runner(store))
    units = len(store.outcomes)
    assert units > 0 and first["evaluation"]["digests"]["weights"] == evaluation.weights_digest(plain_model)
    ran = []
    real = evaluation.units.run_unit
    monkeypatch.setattr(evaluation.units, "run_unit", lambda *a, **k: ran.append(1) or real(*a, **k))
    other = copy.deepcopy(plain_model)
    with torch.no_grad():
        other[1].bias.add_(1e-3)  # the same predictions, nearly: other weights all the same
    evaluation.evaluate(other, images, labels, dataset="mnist", **SELECTION, batch_size=8,
                        runner=evaluation.Runner(store))
    assert len(ran) == units
    shifted = images.clone()
    shifted[0, 0, 0, 0] ^= 1  # one pixel of one image, by one grey level
    evaluation.evaluate(plain_model, shifted, labels, dataset="mnist", **SELECTION, batch_size=8,
                        runner=evaluation.Runner(store))
    assert len(ran) == 2 * units
    again = evaluation.evaluate(plain_model, images, labels, dataset="mnist", **SELECTION, batch_size=8,
                                runner=evaluation.Runner(store))
    assert len(ran) == 2 * units and again["threat_models"] == first["threat_models"]


def test_a_flag_says_what_to_do_next_and_a_passed_check_does_not():
    flagged = evaluation.Check(check="autoattack-beats-white-box", where="ℓ∞ 0.3", value=0.2, threshold=0.05,
                               flagged=True, rule="r", message="m").as_json()
    passed = {**flagged, "flagged": False}
    assert "next: the white-box figures overstate robustness" in evaluation.format_checks([flagged])
    assert "next:" not in evaluation.format_checks([passed])
    assert set(evaluation.report.NEXT_STEPS) >= {"constant-predictor", "fgsm-beats-pgd", "large-epsilon-sanity",
                                                 "larger-epsilon-not-lower", "sweep-accuracy-rises",
                                                 "sweep-above-grey-bound"}
