"""The evaluation attacks against their references, on one small CNN trained here in a few seconds: robust
accuracies (and, for the minimal-perturbation attacks, median perturbation sizes) against foolbox 3.3.4 and
pyautoattack on the same model and inputs, the threat-model contract of every registered attack, and the
exactness of SLIDE's l1 projection.

The model learns the real MNIST stand-in (../shared) when it exists, else the synthetic digits, each with its
own epsilons, chosen so that robust accuracies are intermediate: a comparison at ~0% or ~100% proves nothing.

Everything runs on the CPU (DEVICE), on a GPU machine too: foolbox and pyautoattack are given that device
explicitly, since foolbox's PyTorchModel otherwise moves the shared model to CUDA in place.
"""
import copy

import eagerpy as ep
import foolbox as fb
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pyautoattack import AutoAttack as PackageAutoAttack
from torch import nn

from attacks import ATTACKS
from attacks.autoattack import PACKAGE_NORMS, AutoAttack
from attacks.common import clip_to_ball, flat_norm
from attacks.cw import CarliniWagnerL2
from attacks.deepfool import DeepFool
from attacks.pgd import FGSM, PGD
from attacks.slide import SLIDE, per_sample_quantile, project_l1_ball
from data import load_split
from formats import synthetic_digits, write_mnist
from models.normalize import Normalize

DEVICE = torch.device("cpu")
N_COMPARED = 300  # inputs of every foolbox comparison: one sample is 1/3 of a percentage point
POINT = 0.01

# Per data source. "l1" is SLIDE's; dense l1 PGD spreads its budget over all pixels and needs far more;
# AutoAttack, the strongest, needs less.
EPSILONS = {
    "mnist": {"linf": 0.08, "l2": 1.0, "l1": 10.0, "l1-dense": 12.0, "aa-linf": 0.08},
    "synthetic": {"linf": 0.17, "l2": 2.3, "l1": 18.0, "l1-dense": 38.0, "aa-linf": 0.13},
}
# Carlini-Wagner cut down from 9 x 1000 steps for time, the same on both sides.
CW_SETTINGS = dict(binary_search_steps=3, steps=100, initial_const=1.0)


def small_cnn():
    return nn.Sequential(
        Normalize((0.1307,), (0.3081,)),
        nn.Conv2d(1, 8, 4, stride=2, padding=1), nn.ReLU(),   # 28 -> 14
        nn.Conv2d(8, 16, 4, stride=2, padding=1), nn.ReLU(),  # 14 -> 7
        nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def setting(request, tmp_path_factory):
    """(model in eval mode, N_COMPARED test images in [0, 1], their labels, epsilons)."""
    try:
        root, source = request.getfixturevalue("mnist_stand_in_root"), "mnist"
    except pytest.skip.Exception:
        root, source = tmp_path_factory.mktemp("synthetic-mnist"), "synthetic"
        images, labels = synthetic_digits(2500)
        write_mnist(root, images[:2000], labels[:2000], images[2000:], labels[2000:])
    train_images, train_labels = (t.to(DEVICE) for t in load_split("mnist", str(root), train=True))
    test_images, test_labels = (t.to(DEVICE) for t in load_split("mnist", str(root), train=False))
    torch.manual_seed(0)
    model = small_cnn().to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        for index in torch.randperm(len(train_labels), device=DEVICE).split(128):
            loss = F.cross_entropy(model(train_images[index].float() / 255), train_labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    optimizer.zero_grad()
    model.eval()
    x, y = test_images[:N_COMPARED].float() / 255, test_labels[:N_COMPARED]
    assert accuracy(model, x, y) > 0.9, "the model must learn the task for the comparisons to mean anything"
    return model, x, y, EPSILONS[source]


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def misclassified(model, x, y):
    with torch.no_grad():
        return model(x).argmax(dim=1) != y


def foolbox_model(model):
    return fb.PyTorchModel(model, bounds=(0, 1), device=DEVICE)


def foolbox_run(attack, model, x, y, epsilon):
    """foolbox's (raw, robust accuracy of its clipped examples)."""
    raw, _, success = attack(foolbox_model(model), x, y, epsilons=epsilon)
    return raw, 1 - success.float().mean().item()


def assert_intermediate(robust_accuracy):
    assert 0.1 <= robust_accuracy <= 0.9, f"robust accuracy {robust_accuracy:.3f}: choose another epsilon"


def assert_same_robust_accuracy(ours, theirs, tolerance=1 * POINT):
    assert_intermediate(theirs)
    assert abs(ours - theirs) <= tolerance + 1e-6, f"ours {ours:.4f}, foolbox {theirs:.4f}"  # float32 means


def assert_same_median_size(model, x, y, ours_min, theirs_raw, norm):
    """Median perturbation size over the samples that both make adversarial from a correct clean input."""
    both = ~misclassified(model, x, y) & misclassified(model, ours_min, y) & misclassified(model, theirs_raw, y)
    assert both.sum() >= len(x) // 3
    ours = flat_norm(ours_min - x, norm)[both].median().item()
    theirs = flat_norm(theirs_raw - x, norm)[both].median().item()
    assert abs(ours / theirs - 1) <= 0.10, f"median {norm} size: ours {ours:.4f}, foolbox {theirs:.4f}"


# --- against foolbox 3.3.4 --------------------------------------------------------------------------------

def test_fgsm_matches_foolbox_robust_accuracy(setting):
    model, x, y, eps = setting
    ours = accuracy(model, FGSM(eps["linf"])(model, x, y), y)
    _, theirs = foolbox_run(fb.attacks.FGSM(), model, x, y, eps["linf"])
    assert_same_robust_accuracy(ours, theirs)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_is_at_least_as_strong_as_foolbox_pgd(setting, norm):
    """Random starts differ, hence the 2-point allowance; a stronger attack is fine."""
    model, x, y, eps = setting
    epsilon = eps["l1-dense" if norm == "l1" else norm]
    reference = {"linf": fb.attacks.LinfPGD, "l2": fb.attacks.L2PGD, "l1": fb.attacks.L1PGD}[norm]
    torch.manual_seed(1)
    ours = accuracy(model, PGD(epsilon, norm, steps=20, rel_stepsize=0.1)(model, x, y), y)
    torch.manual_seed(1)
    _, theirs = foolbox_run(reference(steps=20, rel_stepsize=0.1), model, x, y, epsilon)
    assert_intermediate(theirs)
    assert ours <= theirs + 2 * POINT + 1e-6, f"ours {ours:.4f}, foolbox {theirs:.4f}"


@pytest.mark.slow
def test_slide_matches_foolbox_robust_accuracy(setting):
    model, x, y, eps = setting
    ours = accuracy(model, SLIDE(eps["l1"], steps=50, rel_stepsize=0.05)(model, x, y), y)
    _, theirs = foolbox_run(fb.attacks.SparseL1DescentAttack(steps=50, rel_stepsize=0.05), model, x, y, eps["l1"])
    assert_same_robust_accuracy(ours, theirs)


class FoolboxSLIDEWithExactProjection(fb.attacks.SparseL1DescentAttack):
    """foolbox's SLIDE with its projection (inexact, see attacks/slide.py) replaced by ours."""

    def project(self, x, x0, epsilon):
        return ep.astensor(x0.raw + project_l1_ball((x - x0).raw, epsilon))


def test_slide_differs_from_foolbox_only_by_the_projection(setting):
    model, x, y, eps = setting
    ours = SLIDE(eps["l1"], steps=20, rel_stepsize=0.1)(model, x, y)
    attack = FoolboxSLIDEWithExactProjection(steps=20, rel_stepsize=0.1)
    _, theirs, _ = attack(foolbox_model(model), x, y, epsilons=eps["l1"])
    assert (ours - theirs).abs().max() < 1e-5


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.slow
def test_deepfool_matches_foolbox_robust_accuracy_and_median_size(setting, norm):
    model, x, y, eps = setting
    attack = DeepFool(eps[norm], norm)
    reference = {"linf": fb.attacks.LinfDeepFoolAttack, "l2": fb.attacks.L2DeepFoolAttack}[norm](loss="logits")
    theirs_raw, theirs = foolbox_run(reference, model, x, y, eps[norm])
    assert_same_robust_accuracy(accuracy(model, attack(model, x, y), y), theirs)
    assert_same_median_size(model, x, y, attack.minimize(model, x, y), theirs_raw, norm)


@pytest.mark.slow
def test_carlini_wagner_matches_foolbox_robust_accuracy_and_median_size(setting):
    model, x, y, eps = setting
    attack = CarliniWagnerL2(eps["l2"], **CW_SETTINGS)
    theirs_raw, theirs = foolbox_run(fb.attacks.L2CarliniWagnerAttack(**CW_SETTINGS), model, x, y, eps["l2"])
    ours_min = attack.minimize(model, x, y)
    ours = (x + clip_to_ball(ours_min - x, eps["l2"], "l2")).clamp(0, 1)  # = attack(model, x, y), checked below
    assert_same_robust_accuracy(accuracy(model, ours, y), theirs)
    assert_same_median_size(model, x, y, ours_min, theirs_raw, "l2")


# --- AutoAttack through pyautoattack ----------------------------------------------------------------------

@pytest.mark.slow
def test_autoattack_adapter_matches_pyautoattack(setting):
    """CPU. Also the contract of every attack (see below) for AutoAttack at ℓ∞, on this run."""
    model, x, y, eps = setting
    x, y = x[:24].clone(), y[:24]
    ours = assert_keeps_the_contract(model, x, y, AutoAttack(eps["aa-linf"], "linf", seed=0))
    direct = PackageAutoAttack(copy.deepcopy(model), device=DEVICE, eps=eps["aa-linf"], norm=PACKAGE_NORMS["linf"],
                               seed=0, version="standard")
    theirs, _ = direct.run_standard_evaluation(x, y, batch_size=500)
    assert_intermediate(accuracy(model, theirs, y))
    assert accuracy(model, ours, y) == accuracy(model, theirs, y)
    assert torch.allclose(ours, theirs)


# --- the contract of every registered attack ---------------------------------------------------------------

THREAT_MODEL = {
    "fgsm": "linf", "pgd-linf": "linf", "pgd-l2": "l2", "pgd-l1": "l1", "slide": "l1", "deepfool-linf": "linf",
    "deepfool-l2": "l2", "cw-l2": "l2", "aa-linf": "linf", "aa-l2": "l2", "aa-l1": "l1",
}
# AutoAttack at ℓ2 and ℓ1 gets thrice the comparisons' epsilon: its first attack then breaks every sample, and
# the later ones (thousands of Square queries on each robust sample) never run. The contract is the
# adapter's (the same code at every norm); its ℓ∞ run in full is checked in the comparison with pyautoattack.
CONTRACT_EPSILON_SCALE = {"aa-l2": 3, "aa-l1": 3}
# Options for a quick run: PGD needs a step size, SLIDE and Carlini-Wagner get a short budget.
QUICK = {
    "pgd-linf": dict(rel_stepsize=0.25), "pgd-l2": dict(rel_stepsize=0.25), "pgd-l1": dict(rel_stepsize=0.25),
    "slide": dict(steps=10, rel_stepsize=0.2), "cw-l2": dict(binary_search_steps=3, steps=30),
}


def test_registry_holds_every_evaluation_attack():
    assert set(ATTACKS) == set(THREAT_MODEL)


def assert_keeps_the_contract(trained, x, y, attack):
    """attack(model, x, y) on a copy of the model in training mode: the result stays in the box and the
    ball, and the input, the model's mode and its parameters' gradients are as they were. Returns it."""
    model = copy.deepcopy(trained).train()  # eval mode during the attack must not stick
    assert all(p.grad is None for p in model.parameters())
    x_before = x.clone()
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (flat_norm(x_adv - x, attack.norm) <= attack.epsilon * (1 + 1e-5) + 1e-6).all()
    assert torch.equal(x, x_before)
    if hasattr(attack, "minimize"):  # the minimal adversarial, clipped into the ball
        minimal = attack.minimize(model, x, y)
        assert torch.equal(x_adv, (x + clip_to_ball(minimal - x, attack.epsilon, attack.norm)).clamp(0, 1))
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    return x_adv


# aa-linf keeps it in test_autoattack_adapter_matches_pyautoattack, whose run serves both
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name.startswith("aa") else name
                                  for name in sorted(THREAT_MODEL) if name != "aa-linf"])
def test_attack_stays_in_the_box_and_the_ball_and_leaves_model_and_input_as_they_were(setting, name):
    model, x, y, eps = setting
    norm = THREAT_MODEL[name]
    epsilon = eps[norm] * CONTRACT_EPSILON_SCALE.get(name, 1)
    attack = ATTACKS[name](epsilon, **QUICK.get(name, {}))
    assert attack.epsilon == epsilon and attack.norm == norm
    assert_keeps_the_contract(model, x[:12].clone(), y[:12], attack)


# --- SLIDE's pieces -----------------------------------------------------------------------------------------

def projection_by_bisection(v, epsilon):
    """The projection onto the l1 ball is soft thresholding at the theta where the l1 norm of the result
    is epsilon (KKT conditions); found here by bisection, one row at a time, in float64."""
    rows = []
    for row in v.double():
        if row.abs().sum() <= epsilon:
            rows.append(row)
            continue
        low, high = 0.0, row.abs().max().item()
        for _ in range(100):
            theta = (low + high) / 2
            low, high = (theta, high) if (row.abs() - theta).clamp_min(0).sum() > epsilon else (low, theta)
        rows.append(row.sign() * (row.abs() - high).clamp_min(0))
    return torch.stack(rows)


def test_l1_projection_is_exact():
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(40, 1, 7, 9, generator=generator, dtype=torch.float64, device=DEVICE)
    v *= torch.rand(40, 1, 1, 1, generator=generator, dtype=torch.float64, device=DEVICE) * 2  # some inside the ball
    v[0] = 0
    v[1, 0, 0, :3] = torch.tensor([5.0, 5.0, -5.0], device=DEVICE)  # ties
    epsilon = 20.0
    assert 0 < (flat_norm(v, "l1") <= epsilon).sum() < len(v)
    projected = project_l1_ball(v, epsilon)
    assert torch.allclose(projected.flatten(1), projection_by_bisection(v.flatten(1), epsilon), atol=1e-9)
    # A Euclidean projection p of v onto a convex set: <v - p, z - p> <= 0 for every z in the set.
    z = torch.randn(500, 63, generator=generator, dtype=torch.float64, device=DEVICE)
    radii = epsilon * torch.rand(500, 1, generator=generator, dtype=torch.float64, device=DEVICE)
    z = z / flat_norm(z, "l1").unsqueeze(1) * radii
    p, w = projected.flatten(1), v.flatten(1)
    assert (((w - p).unsqueeze(1) * (z.unsqueeze(0) - p.unsqueeze(1))).sum(-1) <= 1e-9).all()


def test_sparse_step_threshold_is_numpys_quantile():
    values = torch.rand(5, 784, generator=torch.Generator().manual_seed(0), device=DEVICE)
    for q in (0.0, 0.5, 0.99, 1.0):
        assert np.allclose(per_sample_quantile(values, q).numpy(), np.quantile(values.numpy(), q, axis=-1))
