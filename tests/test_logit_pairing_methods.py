"""The logit-pairing family on the CPU: CLP's and LSQ's losses, steps and scripts (CLP.py, LSQ.py), ALP's
loss weights (--clean-weight, --adv-weight) with its default loss unchanged, and the shared loop's command
lines and run folders."""
import copy
import json
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import CLP
import LSQ
import training.alp
from attacks import ATTACKS
from conftest import make_optimizer, run_eval
from cuda_graph import GraphedStep
from training.flags import build_parser, parse_command_line
from training.noise import with_gaussian_noise
from training.records import run_name
from weights import build_model

DEVICE = torch.device("cpu")


def cross_entropy(logits, labels):
    return np.mean([np.log(np.exp(row).sum()) - row[k] for row, k in zip(logits.numpy(), labels.numpy())])


LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [1.0, -2.0, 3.0], [0.0, 1.0, 1.0]])
LABELS = torch.tensor([0, 1, 2, 1])


def returning(logits):
    return lambda x: logits  # a "network" whose logits are given


# --- the losses, against hand computations -------------------------------------------------------------------

def test_clp_loss_is_cross_entropy_plus_weight_times_mse_of_first_half_against_second_half():
    loss, logits = CLP.clp_loss(returning(LOGITS), torch.zeros(4, 1), LABELS, pairing_weight=0.3)
    pairs = ((LOGITS[:2] - LOGITS[2:]) ** 2).numpy()  # image 0 with image 2, 1 with 3
    expected = cross_entropy(LOGITS, LABELS) + 0.3 * pairs.sum() / pairs.size
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(logits, LOGITS)


def test_clp_loss_leaves_the_last_image_of_an_odd_batch_out_of_the_pairs_and_a_single_image_unpaired():
    logits = LOGITS[:3]
    loss, _ = CLP.clp_loss(returning(logits), torch.zeros(3, 1), LABELS[:3], pairing_weight=2.0)
    expected = cross_entropy(logits, LABELS[:3]) + 2.0 * ((logits[0] - logits[1]) ** 2).mean().item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss, _ = CLP.clp_loss(returning(LOGITS[:1]), torch.zeros(1, 1), LABELS[:1], pairing_weight=2.0)
    assert loss.item() == pytest.approx(cross_entropy(LOGITS[:1], LABELS[:1]), rel=1e-6)  # finite, no pair


def test_lsq_loss_is_cross_entropy_plus_weight_times_batch_mean_of_logit_l2_norms():
    loss, logits = LSQ.lsq_loss(returning(LOGITS), torch.zeros(4, 1), LABELS, squeeze_weight=0.5)
    norms = [np.sqrt((row ** 2).sum()) for row in LOGITS.numpy()]  # sqrt(5), sqrt(0.5), sqrt(14), sqrt(2)
    expected = cross_entropy(LOGITS, LABELS) + 0.5 * np.mean(norms)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(logits, LOGITS)


def test_lsq_gradient_is_finite_where_the_logits_start_at_zero():
    """The MNIST net's head starts at zero: the norm of zero logits has no derivative, PyTorch's is 0."""
    torch.manual_seed(0)
    model = build_model("mnist", "mnist")
    loss, logits = LSQ.lsq_loss(model, torch.rand(4, 1, 28, 28), LABELS, squeeze_weight=0.5)
    assert torch.count_nonzero(logits) == 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("clean_weight, adv_weight, leverage", [(0.5, 0.5, 0.0), (0.0, 1.0, 0.5), (1.0, 0.0, 0.5)])
def test_alp_loss_weighs_each_cross_entropy_and_the_pairing(clean_weight, adv_weight, leverage):
    """50% AT, 100% AT + ALP, Plain + ALP."""
    logits_nat, logits_adv = LOGITS, LOGITS.flip(1)
    outputs = {0: logits_nat, 1: logits_adv}
    model = lambda x: outputs[int(x[0, 0])]  # noqa: E731 - x marks which half is asked for
    squared = ((logits_adv - logits_nat) ** 2).numpy()
    expected = (clean_weight * cross_entropy(logits_nat, LABELS) + adv_weight * cross_entropy(logits_adv, LABELS)
                + leverage * squared.sum() / squared.size)
    loss, _ = training.alp.alp_loss(model, torch.zeros(4, 1), torch.ones(4, 1), LABELS, leverage, clean_weight,
                                    adv_weight)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_alp_default_step_is_bit_identical_to_the_loss_before_the_weights_were_flags():
    torch.manual_seed(0)
    model = build_model("mnist", "mnist")
    torch.nn.init.normal_(model.fc.weight, std=0.1)
    twin = copy.deepcopy(model)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    attack = ATTACKS["pgd-linf"](0.3, steps=2, stepsize=0.1)
    optimizer, twin_optimizer = (torch.optim.Adam(m.parameters(), lr=1e-3) for m in (model, twin))
    torch.manual_seed(1)  # the same PGD start and dropout for both
    loss, _ = training.alp.train_step(model, model, attack, optimizer, x, y, 0.5)
    torch.manual_seed(1)
    x_adv = attack(twin, x, y)
    twin.train()
    logits_nat, logits_adv = twin(x).float(), twin(x_adv).float()
    before = F.cross_entropy(logits_nat, y) + F.cross_entropy(logits_adv, y) + 0.5 * F.mse_loss(logits_adv, logits_nat)
    twin_optimizer.zero_grad()
    before.backward()
    twin_optimizer.step()
    assert torch.equal(loss, before.detach())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


# --- the noise and the steps ---------------------------------------------------------------------------------

def test_noise_is_gaussian_of_the_given_std_clipped_to_the_image_range_and_none_at_std_0():
    torch.manual_seed(0)
    x = torch.full((20000,), 0.5)
    noisy = with_gaussian_noise(x, 0.1)
    assert (noisy - x).std().item() == pytest.approx(0.1, rel=0.03)
    clipped = with_gaussian_noise(x, 0.5)
    assert clipped.min() == 0 and clipped.max() == 1  # a std of 0.5 around 0.5 leaves the range often
    assert with_gaussian_noise(x, 0.0) is x


@pytest.mark.parametrize("script", [CLP, LSQ])
def test_a_step_trains_on_the_noised_images_and_lowers_the_loss(script):
    torch.manual_seed(0)
    model = build_model("lenet", "mnist")
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = []
    model.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    losses = [script.train_step(model, optimizer, x, y, 0.1, 0.5)[0].item() for _ in range(20)]
    assert losses[-1] < 0.7 * losses[0]
    assert not torch.equal(seen[0], x) and not torch.equal(seen[0], seen[1])  # fresh noise at each step


@pytest.mark.parametrize("script", [CLP, LSQ])
def test_the_graph_plumbing_gives_the_eager_steps_figures_for_any_scripts_iteration(script):
    """GraphedStep records whatever iteration the script gives (here its CPU stand-in without a graph)."""
    torch.manual_seed(0)
    model = build_model("lenet", "mnist")
    twin = copy.deepcopy(model)
    args = parse_command_line(["lenet", "mnist"], method=script.__name__)[0]
    optimizer, twin_optimizer = (make_optimizer("adam", m.parameters(), 1e-3, fused=True) for m in (model, twin))
    graphed = GraphedStep(script.make_iteration(args, optimizer, nullcontext), model, model, optimizer, nullcontext,
                          8, capture=False)
    eager = script.make_iteration(args, twin_optimizer, nullcontext)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(2):
        torch.manual_seed(5)
        loss, logits = graphed(x, y)
        torch.manual_seed(5)
        twin_loss, twin_logits = eager(twin, twin, x, y)
        torch.testing.assert_close((loss, logits), (twin_loss, twin_logits))
    torch.testing.assert_close(list(model.parameters()), list(twin.parameters()))


# --- the command lines and run folders -----------------------------------------------------------------------

def flags_of(method):
    return {o for action in build_parser(method=method)._actions for o in action.option_strings}


def test_each_script_has_its_own_flags_and_shares_the_others():
    alp, clp, lsq = (flags_of(method) for method in ("ALP", "CLP", "LSQ"))
    assert {"--leverage", "--clean-weight", "--adv-weight", "--epsilon", "--steps", "--attack"} <= alp - clp - lsq
    assert clp - alp == {"--noise-std", "--pairing-weight"}
    assert lsq - alp == {"--noise-std", "--squeeze-weight"}
    assert alp & clp == alp & lsq == clp & lsq - {"--noise-std"}


@pytest.mark.parametrize("method, own", [("CLP", {"pairing_weight": 0.5}), ("LSQ", {"squeeze_weight": 0.5})])
def test_clp_and_lsq_default_to_mosbachs_mnist_settings(method, own):
    args, filled = parse_command_line(["lenet", "mnist"], method=method)
    settings = {"optimizer": "adam", "lr": 1e-3, "batch_size": 256, "epochs": 100, "noise_std": 0.5,
                "weight_decay": 0, "learning_policy": "null", **own}
    assert {key: getattr(args, key) for key in settings} == settings and args.method == method
    assert set(filled) == set(settings) | {"momentum"}


def test_alp_weights_default_to_1_and_1_and_all_zero_weights_are_refused(capsys):
    args, _ = parse_command_line(["mnist", "mnist"])
    assert (args.clean_weight, args.adv_weight, args.method) == (1.0, 1.0, "ALP")
    with pytest.raises(SystemExit):
        parse_command_line(["mnist", "mnist", "--clean-weight=0", "--adv-weight=0", "--leverage=0"])
    assert "are all 0" in capsys.readouterr().err


@pytest.mark.parametrize("method, argv, says", [
    ("CLP", ["--pairing-weight=-1"], "--pairing-weight must be >= 0"),
    ("LSQ", ["--squeeze-weight=nan"], "--squeeze-weight must be a finite number"),
    ("LSQ", ["--noise-std=-0.1"], "--noise-std must be >= 0"),
    ("ALP", ["--adv-weight=-1"], "--adv-weight must be >= 0"),
    ("CLP", ["--leverage=0.5"], "unrecognized arguments: --leverage=0.5"),
])
def test_bad_method_flags_are_refused_in_one_line(method, argv, says, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_command_line(["lenet", "mnist", *argv], method=method)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and says in err, err


def test_run_folders_name_the_method_and_its_own_values_and_alps_default_name_is_unchanged():
    def name(method, *argv):
        return run_name(vars(parse_command_line(["lenet", "mnist", *argv], method=method)[0]))
    assert name("ALP").startswith("mnist-lenet-ALP-lev0.5-pgd-linf-eps0.3-steps40-step0.01-adam-")
    assert name("ALP", "--clean-weight=0.5", "--adv-weight=0.5").startswith(
        "mnist-lenet-ALP-lev0.5-cw0.5-aw0.5-pgd-linf-")
    assert name("CLP").startswith("mnist-lenet-CLP-pw0.5-noise0.5-adam-lr0.001-wd0-null-ep100-b256-")
    assert name("LSQ", "--squeeze-weight=0").startswith("mnist-lenet-LSQ-sw0-noise0.5-adam-")


# --- CLP.py and LSQ.py end to end, and eval.py on what they write --------------------------------------------

@pytest.mark.parametrize("script", [CLP, LSQ])
def test_script_trains_end_to_end_and_eval_py_evaluates_its_checkpoint(script, synthetic_mnist_root, tmp_path,
                                                                        capsys, cheap_validation):
    """CPU."""
    model = script.main(["lenet", "mnist", "--epochs=2", "--subset=100", "-b=25", "--device=cpu",
                         "--data-root", str(synthetic_mnist_root), "--out", str(tmp_path)])
    (run,) = tmp_path.iterdir()
    assert run.name.startswith(f"mnist-lenet-{script.__name__}-")
    args = json.loads((run / "args.json").read_text())["runs"][0]["args"]
    assert args["method"] == script.__name__ and args["noise_std"] == 0.5
    epoch_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch   2/2 |")]
    assert len(epoch_lines) == 1 and "| train acc " in epoch_lines[0]  # no adversarial half here
    checkpoint = run / "last.pt"
    code, out, err = run_eval(capsys, checkpoint, "--data-root", synthetic_mnist_root, "--n", 20, "--attacks",
                              "fgsm", "--json", tmp_path / "eval.json")
    assert code == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["complete"] and report["training_args"]["method"] == script.__name__
    assert model is not None
