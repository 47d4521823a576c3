"""Host syncs in the attack loops, counted at the dispatcher on the CPU (DEVICE): every read of a value into
Python, every data-dependent shape, every boolean-mask index would make the host wait for a GPU. First the
counter itself is shown to see each kind of sync and to count nothing in a masked loop. Then, with the
checks a GPU gets (every CHECK_EVERY steps; the CPU, where a look costs nothing, checks every step), each
attack asks at most once per ten forward passes of the model, with the same results as when checking every
step: masks keep what finished samples found."""
import pytest
import torch
from torch import nn

import attacks.cw
import attacks.deepfool
from attacks import ATTACKS
from attacks.common import CHECK_EVERY, check_every
from attacks.deepfool import DeepFool, candidate_gradients
from host_syncs import ForwardPasses, HostSyncs
from models import MODELS
from models.normalize import Normalize

DEVICE = torch.device("cpu")
EPSILONS = {"linf": 0.1, "l2": 1.5, "l1": 12.0}
# Short budgets, long enough for every check and early stop to happen. C&W's epsilon and first const make
# about half the samples leave the search inside the ball, at different steps, and the rest stay.
OPTIONS = {
    "pgd-linf": dict(steps=20, rel_stepsize=0.25), "pgd-l2": dict(steps=20, rel_stepsize=0.25),
    "pgd-l1": dict(steps=20, rel_stepsize=0.25), "slide": dict(steps=20),
    "cw-l2": dict(epsilon=0.1, binary_search_steps=3, steps=60, initial_const=1e-2, stop_inside_ball=True),
}


def build(name):
    norm = {"fgsm": "linf", "slide": "l1", "cw-l2": "l2"}.get(name, name.rsplit("-", 1)[-1])
    options = {"epsilon": EPSILONS[norm], **OPTIONS.get(name, {})}
    return ATTACKS[name](**options)


def tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(Normalize((0.5,), (0.25,)), nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 7 * 7, 10)).to(DEVICE).eval()


def inputs(model, n=8):
    """Random images labelled as the model classifies them: every sample has to be attacked."""
    x = torch.rand(n, 1, 14, 14, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad():
        return x, model(x).argmax(1)


@pytest.fixture
def gpu_checks(monkeypatch):
    """The attacks check as on a GPU, though they run on the CPU."""
    for module in (attacks.deepfool, attacks.cw):
        monkeypatch.setattr(module, "check_every", lambda device: CHECK_EVERY)


def counted(model, run):
    with ForwardPasses(model) as passes, HostSyncs() as syncs:
        run()
    return passes.count, syncs


# --- the counter ---------------------------------------------------------------------------------------------

t = torch.tensor([0.5, -1.0, 2.0], device=DEVICE)
SYNCS = {
    "item": lambda: t.sum().item(),
    "bool": lambda: bool((t > 0).any()),
    "if": lambda: 1 if t.max() > 1 else 0,
    "int": lambda: int(t.argmax()),
    "nonzero": lambda: (t > 0).nonzero(),
    "boolean-mask index": lambda: t[t > 0],
    "boolean-mask assignment": lambda: t.clone().__setitem__(t > 0, 0.0),
    "masked_select": lambda: t.masked_select(t > 0),
    "unique": lambda: t.unique(),
    "equal": lambda: torch.equal(t, t),
    "tolist": lambda: t.tolist(),
    "numpy": lambda: t.numpy(),
}


@pytest.mark.parametrize("kind", sorted(SYNCS))
def test_the_counter_sees_each_kind_of_host_sync(kind):
    with HostSyncs() as syncs:
        SYNCS[kind]()
    assert syncs.total == 1, dict(syncs.counts)


def test_the_counter_restores_tolist_and_numpy():
    tolist, numpy = torch.Tensor.tolist, torch.Tensor.numpy
    with HostSyncs():
        pass
    assert torch.Tensor.tolist is tolist and torch.Tensor.numpy is numpy


def test_the_counter_counts_nothing_in_a_masked_loop():
    model = tiny_cnn()
    x, y = inputs(model)
    done = torch.zeros(len(x), dtype=torch.bool)

    def masked():
        nonlocal x, done
        for _ in range(5):
            logits = model(x)
            done = done | (logits.argmax(1) != y)
            x = torch.where(done.view(-1, 1, 1, 1), x, (x + 0.01).clamp(0, 1))
            x[torch.arange(2)] = x[torch.arange(2)].masked_fill(x[:2] > 2, 0)  # long indices: no sync

    passes, syncs = counted(model, masked)
    assert passes == 5 and syncs.total == 0, dict(syncs.counts)


def test_a_loop_that_asks_the_host_every_step_is_caught():
    model = tiny_cnn()
    x, y = inputs(model)

    def asking():
        nonlocal x
        for _ in range(5):
            logits = model(x)
            if (logits.argmax(1) != y).all():
                break
            x = (x + 0.01).clamp(0, 1)

    passes, syncs = counted(model, asking)
    assert syncs.total == passes == 5
    assert syncs.total > passes / 10


# --- the attacks -----------------------------------------------------------------------------------------------

def test_the_cpu_checks_at_every_step_and_other_devices_every_tenth():
    assert check_every(torch.device("cpu")) == 1
    assert check_every(torch.device("cuda")) == CHECK_EVERY == 10


@pytest.mark.parametrize("name", sorted(name for name in ATTACKS if not name.startswith("aa-")))
def test_attack_asks_the_host_at_most_once_per_ten_forward_passes(name, gpu_checks):
    model = tiny_cnn()
    x, y = inputs(model)
    attack = build(name)
    passes, syncs = counted(model, lambda: attack(model, x, y))
    assert passes >= 1
    assert syncs.total <= passes / 10, f"{syncs.total} host syncs in {passes} forward passes: {dict(syncs.counts)}"


@pytest.mark.parametrize("name", ["deepfool-linf", "deepfool-l2", "cw-l2"])
def test_checking_every_step_or_every_tenth_gives_the_same_result(name, request):
    """What a sample found before the check that drops it from the batch is kept, untouched by the steps
    the batch still takes (C&W: with the early abort and samples leaving the search inside the ball)."""
    model = tiny_cnn()
    x, y = inputs(model, 12)
    attack = build(name)
    every_step = attack.minimize(model, x, y)
    request.getfixturevalue("gpu_checks")
    every_tenth = attack.minimize(model, x, y)
    # Equal up to the float32 rounding of batches of another size.
    torch.testing.assert_close(every_tenth, every_step, rtol=1e-6, atol=1e-6)
    assert not torch.equal(every_step, x)  # something was found


def differences_of(model):
    def differences(x):
        logits = model(x)
        return logits[:, 1:] - logits[:, :1], logits.detach()
    return differences


def test_deepfool_candidate_gradients_batched_are_those_one_by_one():
    """The GPU's single batched backward against the CPU's one per candidate."""
    model = tiny_cnn()
    x, _ = inputs(model)
    one_by_one = candidate_gradients(differences_of(model), x, batched=False)
    batched = candidate_gradients(differences_of(model), x, batched=True)
    assert batched[1].shape == (len(x), 9, *x.shape[1:])
    for ours, theirs in zip(batched, one_by_one):
        torch.testing.assert_close(ours, theirs)


def test_deepfool_batched_gradients_run_no_op_slice_by_slice_on_a_batchnorm_resnet(recwarn):
    """CPU: vmap falls back to a loop over the batch for an op without a batching rule, and says so once
    its fallback warnings are on (the legacy vmap of autograd.grad's is_grads_batched did, for the
    convolution, BatchNorm and gather backward passes of a ResNet)."""
    torch.manual_seed(0)
    model = MODELS["resnet20"](num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # as attacks.common.attacking leaves them
    x = torch.rand(4, 3, 16, 16)
    legacy = torch._C._debug_only_are_vmap_fallback_warnings_enabled()
    torch._C._debug_only_display_vmap_fallback_warnings(True)
    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    try:
        batched = candidate_gradients(differences_of(model), x, batched=True)
    finally:
        torch._C._debug_only_display_vmap_fallback_warnings(legacy)
        torch._C._functorch._set_vmap_fallback_warning_enabled(False)  # off unless asked for
    fallbacks = [str(w.message) for w in recwarn if "batching rule" in str(w.message)]
    assert not fallbacks, fallbacks[:3]
    one_by_one = candidate_gradients(differences_of(model), x, batched=False)
    torch.testing.assert_close(batched[1], one_by_one[1])


def test_deepfool_stops_when_every_sample_is_done(request):
    """Early stopping is still early: on a model that every sample fools within a few steps, the CPU runs
    those steps (and the clean pass), a GPU one check's worth, not the 50 steps."""
    model = tiny_cnn()
    x, y = inputs(model)
    attack = DeepFool(0.1, "linf", steps=50)
    on_the_cpu, _ = counted(model, lambda: attack.minimize(model, x, y))
    request.getfixturevalue("gpu_checks")
    as_on_a_gpu, _ = counted(model, lambda: attack.minimize(model, x, y))
    assert 2 <= on_the_cpu < 1 + CHECK_EVERY
    assert as_on_a_gpu == 1 + CHECK_EVERY
