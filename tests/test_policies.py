"""Learning-rate policies (stepped once at the end of every epoch), optimisers, and scheduler state across a
checkpoint round trip."""
import math

import pytest
import torch

from checkpoints import load_checkpoint, save_checkpoint
from conftest import make_optimizer
from optimization import LEARNING_POLICIES, OPTIMIZERS

LR = 0.1
EPOCHS = 200

# name -> (milestones, factor): the table
STEP_POLICIES = {
    "null": ([], 0.1),
    "AT": ([102, 154], 0.1),
    "STD": ([82, 123], 0.1),
    "STD-wrn": ([60, 120, 160], 0.2),
    "TRADES": ([75, 90, 100], 0.1),
    "TRADES-M": ([55, 75, 90], 0.1),
}


def make(policy, epochs=EPOCHS, lr=LR):
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.SGD([param], lr=lr, momentum=0.9)
    return param, optimizer, LEARNING_POLICIES[policy](optimizer, epochs)


def lrs_per_epoch(optimizer, scheduler, epochs, start=0):
    """The rate each epoch start..epochs-1 trains at, stepping the scheduler after each epoch as the
    training loop does."""
    out = []
    for _ in range(start, epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def expected_step_lr(epoch, milestones, factor):
    return LR * factor ** sum(epoch >= m for m in milestones)


def test_registry_holds_exactly_the_documented_policies():
    assert set(LEARNING_POLICIES) == set(STEP_POLICIES) | {"cosine"}


@pytest.mark.parametrize("policy", STEP_POLICIES)
def test_step_policy_reduces_the_rate_from_each_milestone_epoch_on(policy):
    milestones, factor = STEP_POLICIES[policy]
    _, optimizer, scheduler = make(policy)
    lrs = lrs_per_epoch(optimizer, scheduler, EPOCHS)
    assert lrs[0] == pytest.approx(LR)
    for k, m in enumerate(milestones):
        # epoch m-1 still runs at the old rate, epoch m at the reduced one
        assert lrs[m - 1] == pytest.approx(LR * factor ** k), (policy, m)
        assert lrs[m] == pytest.approx(LR * factor ** (k + 1)), (policy, m)
    # and nowhere else does the rate change
    for epoch, lr in enumerate(lrs):
        assert lr == pytest.approx(expected_step_lr(epoch, milestones, factor)), (policy, epoch)
    changes = [e for e in range(1, EPOCHS) if not math.isclose(lrs[e], lrs[e - 1])]
    assert changes == milestones


def test_null_policy_keeps_the_rate_constant():
    _, optimizer, scheduler = make("null")
    assert set(lrs_per_epoch(optimizer, scheduler, EPOCHS)) == {LR}


def test_step_policies_do_not_depend_on_the_number_of_epochs():
    for policy in STEP_POLICIES:
        _, opt_a, sched_a = make(policy, epochs=200)
        _, opt_b, sched_b = make(policy, epochs=50)
        assert lrs_per_epoch(opt_a, sched_a, 200)[:170] == lrs_per_epoch(opt_b, sched_b, 170)


@pytest.mark.parametrize("epochs", [10, 100])
def test_cosine_policy_anneals_to_zero_over_the_given_epochs(epochs):
    _, optimizer, scheduler = make("cosine", epochs=epochs)
    lrs = lrs_per_epoch(optimizer, scheduler, epochs)
    for epoch, lr in enumerate(lrs):
        assert lr == pytest.approx(LR * (1 + math.cos(math.pi * epoch / epochs)) / 2, abs=1e-12)
    assert lrs[0] == pytest.approx(LR)
    assert lrs[epochs // 2] == pytest.approx(LR / 2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert 0 < lrs[-1] < LR * 0.03
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0, abs=1e-12)  # after the last epoch


def test_policy_scales_with_the_initial_rate():
    _, opt_a, sched_a = make("STD-wrn", lr=0.1)
    _, opt_b, sched_b = make("STD-wrn", lr=0.02)
    a, b = lrs_per_epoch(opt_a, sched_a, EPOCHS), lrs_per_epoch(opt_b, sched_b, EPOCHS)
    assert all(y == pytest.approx(x / 5) for x, y in zip(a, b))


# --- resuming --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy,stop", [("AT", 120), ("STD-wrn", 130), ("TRADES", 90), ("cosine", 77),
                                         ("null", 3)])
def test_scheduler_state_survives_a_checkpoint_and_resumes_identically(policy, stop, tmp_path):
    torch.manual_seed(0)
    # the uninterrupted run
    _, optimizer, scheduler = make(policy)
    full = lrs_per_epoch(optimizer, scheduler, EPOCHS)

    # run to `stop`, checkpoint, rebuild from scratch, load, continue
    param, optimizer, scheduler = make(policy)
    first = lrs_per_epoch(optimizer, scheduler, stop)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": {"param": param.detach()}, "meta": {"model": "test"}, "epoch": stop,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, str(path))
    del param, optimizer, scheduler

    state = load_checkpoint(str(path))  # weights_only=True: the scheduler state must pass that loader
    param, optimizer, scheduler = make(policy)
    param.data.copy_(state["model"]["param"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert state["epoch"] == stop
    assert scheduler.last_epoch == stop
    assert optimizer.param_groups[0]["lr"] == pytest.approx(full[stop])
    rest = lrs_per_epoch(optimizer, scheduler, EPOCHS, start=stop)
    assert first + rest == full


def test_checkpoint_is_written_atomically_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {}, "meta": {"a": 1}}, str(path))
    save_checkpoint({"model": {}, "meta": {"a": 2}}, str(path))
    assert load_checkpoint(str(path))["meta"] == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


# --- optimisers ------------------------------------------------------------------------------------------

def test_optimizers_take_their_own_settings_and_refuse_the_others():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = OPTIMIZERS["sgd"](params, lr=0.05, weight_decay=2e-4, momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.8, 2e-4)
    with pytest.raises(TypeError):
        OPTIMIZERS["sgd"](params, lr=0.05, weight_decay=2e-4, momentum=0.8, betas=(0.85, 0.995))
    with pytest.raises(TypeError):
        OPTIMIZERS["adam"](params, lr=0.05, weight_decay=2e-4, betas=(0.85, 0.995), momentum=0.8)
    adam = OPTIMIZERS["adam"](params, lr=0.05, weight_decay=2e-4, betas=(0.85, 0.995))
    assert isinstance(adam, torch.optim.Adam)
    group = adam.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.05, (0.85, 0.995), 2e-4)


def expected_lr(policy, epoch, epochs):
    if policy == "cosine":
        return LR * (1 + math.cos(math.pi * epoch / epochs)) / 2
    return expected_step_lr(epoch, *STEP_POLICIES[policy])


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_every_policy_gives_its_whole_schedule_with_every_optimizer(name):
    for policy in LEARNING_POLICIES:
        optimizer = make_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], lr=LR, weight_decay=5e-4)
        scheduler = LEARNING_POLICIES[policy](optimizer, EPOCHS)
        lrs = lrs_per_epoch(optimizer, scheduler, EPOCHS)
        assert lrs == pytest.approx([expected_lr(policy, e, EPOCHS) for e in range(EPOCHS)], abs=1e-12), policy
