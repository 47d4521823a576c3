"""Validation in float32 with eval.py's own attacks, the time estimate ALP.py prints before a long job (and
the timings it comes from), and the warning that ends a run whose model has barely learnt. CPU only."""
import csv
import time

import pytest
import torch

import ALP
import training.loop
import training.validation
from attacks import ATTACKS
from conftest import QUICK
from data import DeviceLoader
from evaluation.suite import SUITES
from models import MODELS
from training.clock import BatchClock, estimate_line
from training.hyp import HYP
from training.speed import cpu_computes_bf16_natively
from training.validation import barely_learnt, validate, validation_attack, validation_seconds

DEVICE = "cpu"


# --- validation: eval.py's attack, in float32 --------------------------------------------------------------

# The reference's validation attacks (its VALIDER table): an independent record of what ALP.py must validate with.
REFERENCE_VALIDATION = {"cifar": (8 / 255, 10, 2 / 255), "mnist": (0.3, 100, 0.01)}


@pytest.mark.parametrize("family", ["cifar", "mnist"])
def test_the_validation_attack_is_the_references(family):
    attack = validation_attack(family)
    epsilon, steps, stepsize = REFERENCE_VALIDATION[family]
    assert (attack.norm, attack.steps, attack.random_start) == ("linf", steps, True)
    assert (attack.epsilon, attack.stepsize) == (pytest.approx(epsilon), pytest.approx(stepsize))


def test_the_validation_attack_is_read_from_eval_pys_table_not_copied(monkeypatch):
    """Changing eval.py's PGD-100 column changes what training validates with."""
    table = SUITES["mnist"]["linf"]
    columns = [(label, name, {**options, "steps": 7}) if label == "PGD-100" else (label, name, options)
               for label, name, options in table["attacks"]]
    monkeypatch.setitem(SUITES["mnist"], "linf", {"epsilons": ["0.2", *table["epsilons"]], "attacks": columns})
    attack = validation_attack("mnist")
    assert (attack.steps, attack.epsilon) == (7, pytest.approx(0.2))


def test_validation_runs_in_float32_while_training_runs_under_bf16(synthetic_mnist_root, tmp_path, monkeypatch,
                                                                   cheap_validation):
    """CPU, where it computes bf16 (elsewhere training runs in float32 too)."""
    if not cpu_computes_bf16_natively():
        pytest.skip("this CPU has no bf16 arithmetic: bf16 autocast is off for training as well")
    phase, seen = ["training"], {"training": set(), "validation": set()}

    def in_phase(function):
        def spy(*args, **kwargs):
            phase.append("validation")
            try:
                return function(*args, **kwargs)
            finally:
                phase.pop()
        return spy

    def watched(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, x: seen[phase[-1]].add(torch.is_autocast_enabled("cpu")))
        return model

    build_model = training.loop.build_model
    monkeypatch.setattr(training.loop, "build_model", watched)
    monkeypatch.setattr(training.loop, "validate", in_phase(training.loop.validate))  # each epoch's validation
    timed_one = in_phase(training.validation.validate)  # the validation timed before training
    monkeypatch.setattr(training.validation, "validate", timed_one)
    ALP.main([*QUICK, "--epochs=1", "--subset=100", "--data-root", str(synthetic_mnist_root),
              "--out", str(tmp_path)])
    assert seen == {"training": {True}, "validation": {False}}


# --- the time estimate ---------------------------------------------------------------------------------------

class SlowModel(torch.nn.Module):
    """Uniform logits after `seconds_per_image` of sleep per image: a forward pass of known cost."""

    def __init__(self, seconds_per_image):
        super().__init__()
        self.seconds_per_image = seconds_per_image

    def forward(self, x):
        time.sleep(self.seconds_per_image * len(x))
        return torch.zeros(len(x), 10)


def unchanged(model, x, y):
    return x


def test_validation_seconds_extrapolates_its_first_batch_to_the_whole_split():
    images = torch.zeros(60, 1, 4, 4, dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(60) % 10, batch_size=10, device=DEVICE)
    model = SlowModel(0.002)
    estimate, timed = validation_seconds(model, loader, unchanged, 10)
    started = time.perf_counter()
    validate(model, loader, unchanged, 10)
    actual = time.perf_counter() - started
    assert timed == 10 and 0.5 * actual < estimate < 2 * actual


def test_timing_the_validation_leaves_random_streams_weights_and_mode_as_they_were():
    torch.manual_seed(0)
    model = MODELS["mnist"](num_classes=10).train()
    weights = {key: value.clone() for key, value in model.state_dict().items()}
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    loader = DeviceLoader(images, torch.randint(0, 10, (20,)), batch_size=10, device=DEVICE)
    random_state = torch.get_rng_state()
    validation_seconds(model, loader, ATTACKS["pgd-linf"](0.3, steps=2, stepsize=0.1), 10)  # random starts
    assert torch.equal(torch.get_rng_state(), random_state)
    assert model.training and all(torch.equal(value, weights[key]) for key, value in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_batch_clock_leaves_out_the_first_batch_and_answers_once(monkeypatch):
    monkeypatch.setitem(HYP, "timed_batches", 3)
    monkeypatch.setitem(HYP, "timed_seconds", 100)
    clock, answers = BatchClock(DEVICE), []
    for batch, pause in enumerate([0.3, 0.02, 0.02, 0.02, 0.02]):
        time.sleep(pause)
        answers.append(clock.tick(last=batch == 4))
    assert answers[:3] == [None] * 3 and answers[4] is None
    assert 0.015 < answers[3] < 0.1 and clock.timed == 3  # the slow first batch is not in it


def test_batch_clock_answers_after_its_seconds_or_at_the_epochs_end(monkeypatch):
    monkeypatch.setitem(HYP, "timed_seconds", 0.05)
    clock = BatchClock(DEVICE)
    assert clock.tick() is None
    time.sleep(0.06)
    assert clock.tick() > 0.05 and clock.timed == 1  # one slow batch after the first is enough
    one_batch_epoch = BatchClock(DEVICE)
    time.sleep(0.02)
    assert one_batch_epoch.tick(last=True) >= 0.02 and one_batch_epoch.timed == 1


def test_the_estimate_adds_training_and_validation_over_the_epochs_to_run():
    line = estimate_line(22 * 60, 3, 9 * 60, 50, 84, 84, resumed=False)
    assert line == ("estimated: 31 min per epoch (training 22 min, validation 9.0 min), 43 h for 84 epochs "
                    "(timed on 3 training batches and 50 validation images)")
    line = estimate_line(90, 1, 50, 50, 10, 2, resumed=True)  # --eval-freq 5: 10 * 90 s + 2 * 50 s
    assert line == ("estimated: 90 s per epoch of training, 50 s per validation (2 validated epochs), 17 min for "
                    "the 10 epochs left (timed on 1 training batch and 50 validation images)")
    assert estimate_line(340, 3, 400, 100, 84, 84, resumed=False).startswith(
        "estimated: 12 min per epoch (training 5.7 min, validation 6.7 min), 17 h for 84 epochs")


def test_the_estimate_comes_once_before_the_first_epoch_line_and_in_the_log(synthetic_mnist_root, tmp_path,
                                                                            capsys, cheap_validation):
    """CPU."""
    ALP.main([*QUICK, "--epochs=2", "--subset=200", "--data-root", str(synthetic_mnist_root),
              "--out", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    (estimate,) = [line for line in out if line.startswith("estimated: ")]
    assert out.index(estimate) < next(i for i, line in enumerate(out) if line.startswith("epoch   1/2"))
    assert "per epoch (training " in estimate and " for 2 epochs (timed on 3 training batches and 100 " in estimate
    (log,) = tmp_path.glob("*/log.txt")
    assert estimate in log.read_text().splitlines()


class FakeClock:
    """time.time and time.perf_counter of the modules that time a run, advanced only by the costs a test
    gives: every other line of the run takes no time on it."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    perf_counter = time


def test_the_estimate_is_the_epoch_it_measures_on_a_clock_with_known_costs(synthetic_mnist_root, tmp_path,
                                                                           monkeypatch):
    """CPU. Each training batch costs 2 s and each validated image 10 ms of a fake clock, the first batch 5 s
    more (one-off costs, which the estimate leaves out): the estimate of training and validation must come
    within 1% of what the epochs then measure."""
    import training.clock
    clock = FakeClock()
    for module in (training.loop, training.clock, training.validation):
        monkeypatch.setattr(module, "time", clock)
    real_step, steps, estimates = ALP.train_step, [], []

    def timed_step(*args, **kwargs):
        steps.append(1)
        clock.now += 2.0 + (5.0 if len(steps) == 1 else 0.0)
        return real_step(*args, **kwargs)

    def timed_validation(family):
        def attack(model, x, y):
            clock.now += 0.01 * len(x)
            return x
        return attack

    def recorded(training_seconds, batches_timed, validation_seconds, *rest):
        estimates.append((training_seconds, validation_seconds))
        return estimate_line(training_seconds, batches_timed, validation_seconds, *rest)

    monkeypatch.setattr(ALP, "train_step", timed_step)
    monkeypatch.setattr(training.loop, "validation_attack", timed_validation)
    monkeypatch.setattr(training.loop, "estimate_line", recorded)
    ALP.main([*QUICK, "--steps=1", "--epochs=3", "--subset=200", "--data-root", str(synthetic_mnist_root),
              "--out", str(tmp_path)])
    ((training_estimate, validation_estimate),) = estimates
    (metrics,) = tmp_path.glob("*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    for row in rows[1:]:  # the epochs after the first, which paid the one-off costs
        measured_validation = float(row["validation_seconds"])
        assert validation_estimate == pytest.approx(measured_validation, rel=0.01)
        assert training_estimate == pytest.approx(float(row["seconds"]) - measured_validation, rel=0.01)
    assert training_estimate == pytest.approx(4 * 2.0) and validation_estimate == pytest.approx(200 * 0.01)


# --- a run that has barely learnt -----------------------------------------------------------------------------

@pytest.mark.parametrize("clean, robust, dataset, says", [
    (0.48, 0.11, "mnist", "clean 48.00% is less than 54.7%, halfway from chance (10%)"),  # 2 epochs of 2000 MNIST
    (0.80, 0.08, "fashionmnist", "robust 8.00% is no better than chance (10%)"),
    (0.97, 0.56, "mnist", None),  # 2 epochs of the real MNIST
    (0.5571, 0.2583, "cifar100", None),  # the reference's CIFAR-100 ResNet18, its lowest clean figure
    (0.45, 0.20, "cifar100", None),  # a ResNet32, smaller: lower, and still a trained model
    (0.7712, 0.4489, "cifar10", None),
    (0.25, 0.005, "cifar100", "clean 25.00% is less than 28.4%, halfway from chance (1%) to what a fully trained "
                              "model reaches; robust 0.50% is no better"),
    (0.50, 0.30, "svhn", "less than 55.0%"),  # no reference figure: halfway to 100%
])
def test_barely_learnt_names_each_figure_that_is_too_low(clean, robust, dataset, says):
    why = barely_learnt(clean, robust, dataset)
    assert (why is None) if says is None else says in why


@pytest.mark.parametrize("figures, warned", [((0.48, 0.11), True), ((0.97, 0.56), False)])
def test_the_last_line_warns_when_the_model_has_barely_learnt(figures, warned, synthetic_mnist_root, tmp_path,
                                                              capsys, monkeypatch, cheap_validation):
    """CPU; the validation's figures are set, so that the line does not depend on how well the run learnt."""
    counts = torch.full((10,), 10)
    monkeypatch.setattr(training.loop, "validate", lambda *args, **kwargs: (*figures, counts))
    ALP.main([*QUICK, "--epochs=1", "--subset=100", "--data-root", str(synthetic_mnist_root),
              "--out", str(tmp_path)])
    last = capsys.readouterr().out.splitlines()[-1]
    (log,) = tmp_path.glob("*/log.txt")
    assert last.startswith("done: best clean") and log.read_text().splitlines()[-1] == last
    assert ("warning: the model has barely learnt (clean 48.00% is less than 54.7%, halfway from chance (10%) to "
            "what a fully trained model reaches): more epochs or images (--subset) needed" in last) == warned
