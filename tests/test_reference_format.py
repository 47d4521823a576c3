"""The reference's checkpoint format (`paras.pt`, a bare state_dict of the network): loading it through
weights.model_from_file with a model name and a data set, exporting ours to it, and the clear refusals
(missing model/data set, keys that do not fit, this project's checkpoints from before the reference's
layout). Files are built from the key tables in reference_layout.py, not from our models. CPU, fast."""
import re

import pytest
import torch

from checkpoints import CheckpointError, checkpoint_meta, save_checkpoint
from weights import build_model, model_from_file, to_reference_state_dict
from data import DATASETS
from reference_layout import REFERENCE_NORMALISATION, random_reference_state_dict, reference_layout, reference_logits

DEVICE = torch.device("cpu")
CASES = [("mnist", "mnist"), ("resnet20", "cifar10"), ("resnet18", "svhn")]  # one of each family of network


def images(dataset, n=4, seed=0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    size = 28 if DATASETS[dataset].family == "mnist" else 32
    return torch.rand(n, len(DATASETS[dataset].mean), size, size, generator=generator).to(DEVICE)


def write_paras(path, name, dataset, seed=0):
    """A reference run's paras.pt: torch.save of the bare state_dict."""
    state = random_reference_state_dict(name, DATASETS[dataset].num_classes, seed, DEVICE)
    torch.save(state, path)
    return state


def write_our_checkpoint(path, model, name, dataset, weights=None):
    save_checkpoint({"model": model.state_dict() if weights is None else weights, "epoch": 7,
                     "meta": checkpoint_meta(name, dataset, {"leverage": 0.5})}, path)


def logits(model, x):
    with torch.no_grad():
        return model.to(DEVICE)(x)


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_datasets_normalise_with_the_reference_constants(dataset):
    assert (DATASETS[dataset].mean, DATASETS[dataset].std) == REFERENCE_NORMALISATION[dataset]


@pytest.mark.parametrize("name, dataset", CASES)
def test_reference_paras_pt_gives_the_reference_logits_and_those_of_the_same_weights_in_our_checkpoint(
        name, dataset, tmp_path):
    paras = tmp_path / "paras.pt"
    state = write_paras(paras, name, dataset)
    model, meta = model_from_file(str(paras), model_name=name, dataset=dataset)
    assert not model.training
    assert (meta["model"], meta["dataset"], meta["num_classes"]) == (name, dataset, DATASETS[dataset].num_classes)

    ours = build_model(name, dataset)
    ours.load_state_dict({**state, "normalize.mean": ours.normalize.mean, "normalize.std": ours.normalize.std})
    write_our_checkpoint(tmp_path / "best.pt", ours, name, dataset)
    from_checkpoint, _ = model_from_file(str(tmp_path / "best.pt"))

    x = images(dataset)
    expected = reference_logits(name, state, x, dataset)  # normalised outside, as the reference does
    assert expected.std() > 0.1  # non-trivial logits, not a degenerate comparison
    torch.testing.assert_close(logits(model, x), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(logits(model, x), logits(from_checkpoint, x))


@pytest.mark.parametrize("name, dataset", CASES)
def test_export_to_the_reference_format_round_trips(name, dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, dataset).to(DEVICE)
    for key, weight in model.state_dict().items():  # non-trivial weights (the MNIST head starts at 0)
        if weight.is_floating_point() and not key.startswith("normalize."):
            weight.add_(0.05 * torch.rand_like(weight))
    write_our_checkpoint(tmp_path / "best.pt", model, name, dataset)
    loaded, _ = model_from_file(str(tmp_path / "best.pt"))

    exported = to_reference_state_dict(loaded)
    num_classes = DATASETS[dataset].num_classes
    assert {k: tuple(v.shape) for k, v in exported.items()} == reference_layout(name, num_classes)
    assert exported.keys() == to_reference_state_dict(model.state_dict()).keys()  # a state_dict works too
    torch.save(exported, tmp_path / "paras.pt")
    back, _ = model_from_file(str(tmp_path / "paras.pt"), model_name=name, dataset=dataset)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in loaded.state_dict().items())
    x = images(dataset)
    assert torch.equal(logits(back, x), logits(loaded, x))
    torch.testing.assert_close(logits(back, x), reference_logits(name, exported, x, dataset),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_name, dataset", [(None, "cifar10"), ("resnet20", None), (None, None)])
def test_bare_state_dict_without_model_and_dataset_is_refused_saying_what_to_give(model_name, dataset, tmp_path):
    write_paras(tmp_path / "paras.pt", "resnet20", "cifar10")
    message = "is a bare state_dict (the reference's paras.pt format), which does not say what network it holds"
    with pytest.raises(CheckpointError, match=re.escape(message)) as error:
        model_from_file(str(tmp_path / "paras.pt"), model_name=model_name, dataset=dataset)
    assert "--model and --dataset" in str(error.value)


@pytest.mark.parametrize("written, asked, dataset, says", [
    ("resnet20", "resnet32", "cifar10", "missing layer1.3.conv1.weight, layer1.3.bn1.weight, "
                                        "layer1.3.bn1.bias and 69 more"),  # 6 blocks of 12 entries
    ("resnet32", "resnet20", "cifar10", "unexpected layer1.3.conv1.weight"),
    ("resnet20", "resnet20", "cifar100", "wrongly shaped fc.weight (10, 64) instead of (100, 64), "
                                         "fc.bias (10,) instead of (100,)"),
    ("mnist", "resnet18", "mnist", "missing conv1.weight"),
])
def test_reference_keys_that_do_not_fit_the_model_are_named(written, asked, dataset, says, tmp_path):
    write_paras(tmp_path / "paras.pt", written, "cifar10" if written != "mnist" else "mnist")
    with pytest.raises(CheckpointError, match=f"does not hold the reference's {asked}: .*{re.escape(says)}"):
        model_from_file(str(tmp_path / "paras.pt"), model_name=asked, dataset=dataset)


def test_our_normalisation_buffers_are_not_part_of_the_reference_format(tmp_path):
    model = build_model("resnet20", "cifar10")
    torch.save(model.state_dict(), tmp_path / "state.pt")
    with pytest.raises(CheckpointError, match="unexpected normalize.mean, normalize.std"):
        model_from_file(str(tmp_path / "state.pt"), model_name="resnet20", dataset="cifar10")


@pytest.mark.parametrize("model_name, dataset, says", [
    ("resnet32", None, "holds a resnet20 trained on cifar10, not the model resnet32 asked for"),
    (None, "cifar100", "holds a resnet20 trained on cifar10, not the data set cifar100 asked for"),
])
def test_our_checkpoint_refuses_a_model_or_dataset_that_contradicts_its_meta(model_name, dataset, says, tmp_path):
    write_our_checkpoint(tmp_path / "best.pt", build_model("resnet20", "cifar10"), "resnet20", "cifar10")
    with pytest.raises(CheckpointError, match=says):
        model_from_file(str(tmp_path / "best.pt"), model_name=model_name, dataset=dataset)
    model, meta = model_from_file(str(tmp_path / "best.pt"), model_name="resnet20", dataset="cifar10")  # agreeing
    assert meta["epoch"] == 7 and meta["args"] == {"leverage": 0.5}


def test_our_checkpoint_whose_weights_do_not_fit_names_the_first_keys(tmp_path):
    weights = build_model("resnet20", "cifar10").state_dict()
    write_our_checkpoint(tmp_path / "best.pt", None, "resnet32", "cifar10", weights=weights)
    with pytest.raises(CheckpointError, match=re.escape("missing layer1.3.conv1.weight, layer1.3.bn1.weight")):
        model_from_file(str(tmp_path / "best.pt"))


# Keys of this project's networks before they took the reference's layout.
OLD_LAYOUT = {
    "resnet20": {"normalize.mean": (1, 3, 1, 1), "normalize.std": (1, 3, 1, 1), "stem.0.weight": (16, 3, 3, 3),
                 "stages.3.shortcut.0.weight": (32, 16, 1, 1), "stages.3.shortcut.1.weight": (32,),
                 "fc.weight": (10, 64), "fc.bias": (10,)},
    "mnist": {"normalize.mean": (1, 1, 1, 1), "normalize.std": (1, 1, 1, 1), "features.0.weight": (32, 1, 3, 3),
              "features.0.bias": (32,), "classifier.1.weight": (200, 1024), "classifier.6.bias": (10,)},
}
OLD_LAYOUT_SAYS = "was written before this project's networks took the reference's layout"


@pytest.mark.parametrize("name, dataset", [("resnet20", "cifar10"), ("mnist", "mnist")])
def test_checkpoints_from_before_the_reference_layout_are_refused(name, dataset, tmp_path):
    old = {k: torch.zeros(shape, device=DEVICE) for k, shape in OLD_LAYOUT[name].items()}
    write_our_checkpoint(tmp_path / "best.pt", None, name, dataset, weights=old)
    with pytest.raises(CheckpointError, match=OLD_LAYOUT_SAYS):
        model_from_file(str(tmp_path / "best.pt"))
    torch.save(old, tmp_path / "bare.pt")  # the same weights saved bare: refused before asking what it is
    with pytest.raises(CheckpointError, match=OLD_LAYOUT_SAYS):
        model_from_file(str(tmp_path / "bare.pt"))
    with pytest.raises(CheckpointError, match=OLD_LAYOUT_SAYS):
        to_reference_state_dict(old)


class NeedsCode:
    pass


def test_bare_file_that_needs_code_to_load_is_refused(tmp_path):
    torch.save({"conv0.weight": torch.zeros(1, device=DEVICE), "hook": NeedsCode()}, tmp_path / "paras.pt")
    with pytest.raises(CheckpointError, match="holds test_reference_format.NeedsCode, which needs code") as info:
        model_from_file(str(tmp_path / "paras.pt"), model_name="resnet20", dataset="cifar10")
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)  # no terminal escapes, one line
