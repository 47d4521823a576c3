"""The one PGD that makes ALP's training pairs and the evaluation's PGD columns. On the CPU (DEVICE), on every
machine."""
import pytest
import torch
import torch.nn.functional as F

from attacks import ATTACKS
from attacks.common import flat_norm
from models import MODELS

DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    model = MODELS["resnet20"](num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3).to(DEVICE).eval()
    return model, torch.rand(16, 3, 32, 32, device=DEVICE), torch.randint(0, 10, (16,), device=DEVICE)


def per_sample_loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


@pytest.mark.parametrize("norm, epsilon", [("linf", 4 / 255), ("l2", 0.25), ("l1", 12.0)])
def test_pgd_stays_in_the_ball_and_the_box_and_raises_the_loss(model_and_batch, norm, epsilon):
    model, x, y = model_and_batch
    torch.manual_seed(1)
    x_adv = ATTACKS[f"pgd-{norm}"](epsilon, steps=10, rel_stepsize=0.25)(model, x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (flat_norm(x_adv - x, norm) <= epsilon * (1 + 1e-5)).all()
    clean, adversarial = per_sample_loss(model, x, y), per_sample_loss(model, x_adv, y)
    assert (adversarial > clean).float().mean() >= 0.9
    assert adversarial.mean() > clean.mean() + 0.1


def test_more_pgd_steps_raise_the_loss_further(model_and_batch):
    model, x, y = model_and_batch
    losses = []
    for steps in (1, 10):
        torch.manual_seed(1)
        x_adv = ATTACKS["pgd-linf"](4 / 255, steps=steps, stepsize=1 / 255)(model, x, y)
        losses.append(per_sample_loss(model, x_adv, y).mean())
    assert losses[1] > losses[0]


def test_fgsm_is_one_full_sign_step_without_random_start(model_and_batch):
    model, x, y = model_and_batch
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_req), y, reduction="sum").backward()
    expected = (x + 0.05 * x_req.grad.sign()).clamp(0, 1)
    x_adv = ATTACKS["fgsm"](0.05)(model, x, y)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    assert torch.equal(x_adv, ATTACKS["fgsm"](0.05)(model, x, y))  # no random start: deterministic
    model.zero_grad(set_to_none=True)
