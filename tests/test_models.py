"""The model registry: each network is the reference's network (key names, shapes, parameter counts and
init, checked against tables written from the reference's facts in reference_layout.py), maps images to one
logit per class, and normalises its input itself. CPU."""
import pytest
import torch
from torch import nn
import torchvision

from models import MODELS
from models.lenet import LeNet
from models.mnist import MnistNet
from models.resnet import CifarResNet, ResNet
from reference_layout import (CIFAR_RESNET_BLOCKS as CIFAR_RESNETS, TORCHVISION_RESNET_BLOCKS as IMAGENET_RESNETS,
                              parameter_count, reference_layout)

DEVICE = torch.device("cpu")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# The ALP reference's networks; lenet is Mosbach et al.'s, tested below against their code.
ALP_REFERENCE_MODELS = [name for name in MODELS if name != "lenet"]


def build(name, num_classes=10):
    channels = 1 if name in ("mnist", "lenet") else 3
    return MODELS[name](num_classes=num_classes, mean=(0.5,) * channels, std=(0.25,) * channels).to(DEVICE)


def network_layout(model):
    """{key: shape} of a model's state_dict without our normalisation buffers."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("normalize.")}


def test_registry_holds_exactly_the_documented_models():
    assert set(MODELS) == set(CIFAR_RESNETS) | set(IMAGENET_RESNETS) | {"mnist", "lenet"}


# --- the reference's key names, shapes and parameter counts ----------------------------------------------

@pytest.mark.parametrize("name", ALP_REFERENCE_MODELS)
@pytest.mark.parametrize("num_classes", [10, 100])
def test_state_dict_has_the_reference_keys_and_shapes_plus_only_our_normalisation(name, num_classes):
    model = build(name, num_classes)
    assert network_layout(model) == reference_layout(name, num_classes)
    extra = [k for k in model.state_dict() if k.startswith("normalize.")]
    assert extra == ["normalize.mean", "normalize.std"]
    assert n_params(model) == parameter_count(reference_layout(name, num_classes))


@pytest.mark.parametrize("name, count", [("resnet32", 466_714), ("resnet18", 11_173_962), ("mnist", 312_202)])
def test_parameter_count_is_the_references(name, count):
    assert n_params(build(name)) == count


@pytest.mark.parametrize("name, blocks", [("resnet18", torchvision.models.resnet18),
                                          ("resnet34", torchvision.models.resnet34)])
def test_imagenet_resnet_is_torchvisions_with_a_3x3_stride_1_stem(name, blocks):
    reference = blocks(num_classes=10)
    reference.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    assert network_layout(build(name)) == {k: tuple(v.shape) for k, v in reference.state_dict().items()}


def test_cifar_resnet_shortcut_is_a_bare_strided_1x1_convolution_only_where_the_shape_changes():
    model = build("resnet32")
    shortcuts = {name: m for name, m in model.named_modules() if name.endswith("shortway")}
    assert list(shortcuts) == ["layer2.0.shortway", "layer3.0.shortway"]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.bias) for m in shortcuts.values()] == [
        (16, 32, (1, 1), (2, 2), None), (32, 64, (1, 1), (2, 2), None)]
    x = torch.rand(2, 16, 8, 8, device=DEVICE)
    assert torch.equal(model.layer1[1].shortcut(x), x)  # identity elsewhere


@pytest.mark.parametrize("name,n", CIFAR_RESNETS.items())
def test_cifar_resnet_has_6n_plus_2_weighted_layers_in_three_stages_of_16_32_64_channels(name, n):
    model = build(name)
    assert isinstance(model, CifarResNet)
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs3) + len(linears) == 6 * n + 2 == int(name[len("resnet"):])
    assert [c.out_channels for c in convs3] == [16] + [16] * 2 * n + [32] * 2 * n + [64] * 2 * n


def test_resnet_stem_is_3x3_without_max_pool():
    for name in ("resnet18", "resnet34"):
        model = build(name)
        assert isinstance(model, ResNet)
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


# --- the reference's init --------------------------------------------------------------------------------

def assert_kaiming_normal(weight, fan):
    """Normal with std sqrt(2 / fan), as kaiming_normal_ for ReLU draws it: the spread within 7% (the weights
    tested have >= 512 entries), and tails that a uniform draw of the same std (bounded at 1.73 std) lacks."""
    expected = (2 / fan) ** 0.5
    assert weight.std().item() == pytest.approx(expected, rel=0.07)
    assert abs(weight.mean().item()) < 0.1 * expected
    assert weight.abs().max().item() > 2.5 * expected


def assert_pytorch_default_linear(linear):
    bound = linear.in_features ** -0.5  # kaiming_uniform_(a=sqrt(5)) and the bias both give 1/sqrt(fan_in)
    assert linear.weight.abs().max() <= bound and linear.weight.std() > 0.8 * bound / 3 ** 0.5
    assert linear.bias.abs().max() <= bound and linear.bias.abs().max() > 0


@pytest.mark.parametrize("name, conv, projection", [
    ("resnet32", "layer2.0.conv1", "layer2.0.shortway"),
    ("resnet18", "layer2.0.conv1", "layer2.0.downsample.0"),
])
def test_resnet_init_is_kaiming_normal_over_fan_out_identity_batchnorm_and_default_linear(name, conv, projection):
    torch.manual_seed(0)
    model = build(name)
    modules = dict(model.named_modules())
    for key in (conv, projection):  # both double the width, so fan-out and fan-in differ by 2
        weight = modules[key].weight
        assert_kaiming_normal(weight, fan=weight.shape[0] * weight.shape[2] * weight.shape[3])
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in batchnorms)
    assert_pytorch_default_linear(model.fc)


def test_mnist_init_is_kaiming_normal_over_fan_in_zero_conv_biases_default_dense_and_zero_head():
    torch.manual_seed(0)
    model = build("mnist")
    assert_kaiming_normal(model.conv[5].weight, fan=32 * 3 * 3)  # 32 -> 64: fan-in is half the fan-out
    assert all(torch.all(model.conv[i].bias == 0) for i in (0, 2, 5, 7))
    assert_pytorch_default_linear(model.dense[0])
    assert_pytorch_default_linear(model.dense[3])
    assert torch.count_nonzero(model.fc.weight) == 0 and torch.count_nonzero(model.fc.bias) == 0


# --- output shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CIFAR_RESNETS) + list(IMAGENET_RESNETS))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_resnet_maps_32x32_colour_images_to_one_logit_per_class(name, num_classes):
    model = build(name, num_classes).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32, device=DEVICE))
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_mnist_net_maps_28x28_grey_images_to_ten_logits():
    model = build("mnist").eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 28, 28, device=DEVICE))
    assert out.shape == (3, 10)


# --- MNIST network ---------------------------------------------------------------------------------------

def test_mnist_net_is_conv32_conv32_pool_conv64_conv64_pool_fc200_dropout_fc200_fc10():
    model = build("mnist")
    assert isinstance(model, MnistNet)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 32, (3, 3)), (32, 32, (3, 3)), (32, 64, (3, 3)), (64, 64, (3, 3))]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    # 28 -> 26 -> 24 -> pool 12 -> 10 -> 8 -> pool 4: 64 * 4 * 4 features
    assert [(l.in_features, l.out_features) for l in linears] == [(1024, 200), (200, 200), (200, 10)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.5]
    # the dropout sits between the first and the second fully connected layer
    assert [type(m) for m in model.dense] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]


def test_mnist_net_last_layer_starts_at_zero_so_initial_outputs_are_all_zero():
    model = build("mnist")
    for mode in (model.eval, model.train):  # with or without dropout
        mode()
        out = model(torch.rand(4, 1, 28, 28, device=DEVICE))
        assert torch.equal(out, torch.zeros(4, 10, device=DEVICE))
    # ...but the layers before it are not degenerate: the head gets gradient
    out = model(torch.rand(4, 1, 28, 28, device=DEVICE))
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3], device=DEVICE)).backward()
    assert model.fc.weight.grad.abs().sum() > 0


def test_mnist_net_dropout_is_active_only_in_training_mode():
    torch.manual_seed(0)
    model = build("mnist")
    nn.init.normal_(model.fc.weight)
    x = torch.rand(2, 1, 28, 28, device=DEVICE)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


# --- Mosbach et al.'s LeNet (uds-lsv/evaluating-logit-pairing-methods, mnist_cifar10/models.py) -------------

def test_lenet_parameter_count_is_mosbachs():
    # Their LeNet counts its own parameters layer by layer (self.parameters), with 32 filters and 28x28x1 input:
    conv1 = 3 * 3 * 1 * 32 + 32        # W_conv1 [3, 3, 1, 32] and its biases:          320
    conv2 = 3 * 3 * 32 * 64 + 64       # W_conv2 [3, 3, 32, 64]:                      18,496
    fc1 = (7 * 7 * 64) * 1024 + 1024   # W_fc1 [7 * 7 * 64, 1024] after two SAME-conv + pool halvings: 3,212,288
    fc2 = 1024 * 10 + 10               # W_fc2 [1024, 10]:                            10,250
    assert conv1 + conv2 + fc1 + fc2 == 3_241_354
    assert n_params(build("lenet")) == 3_241_354


def test_lenet_is_conv3x3_32_same_pool_conv3x3_64_same_pool_fc1024_fc10():
    model = build("lenet")
    assert isinstance(model, LeNet)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 32, (3, 3), (1, 1), (1, 1)), (32, 64, (3, 3), (1, 1), (1, 1))]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(7 * 7 * 64, 1024), (1024, 10)]
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Dropout)) for m in model.modules())  # their bn=False
    features = []
    model.fc1.register_forward_pre_hook(lambda module, inputs: features.append(inputs[0].shape))
    assert model(torch.rand(3, 1, 28, 28, device=DEVICE)).shape == (3, 10)
    assert features == [(3, 7 * 7 * 64)]  # SAME convolutions keep 28 and 14; the 2x2 pools halve them


def test_lenet_relu_follows_every_layer_but_the_last():
    torch.manual_seed(0)
    model = build("lenet").eval()
    x = torch.rand(2, 1, 28, 28, device=DEVICE)
    with torch.no_grad():
        out = nn.functional.max_pool2d(nn.functional.relu(model.conv1(model.normalize(x))), 2)
        out = nn.functional.max_pool2d(nn.functional.relu(model.conv2(out)), 2)
        hidden = nn.functional.relu(model.fc1(out.flatten(1)))
        assert torch.equal(model(x), model.fc2(hidden))
        assert (model(x) < 0).any()  # no ReLU on the logits


@pytest.mark.parametrize("layer, fan_in", [("conv2", 3 * 3 * 32), ("fc1", 7 * 7 * 64), ("fc2", 1024)])
def test_lenet_init_is_tensorflow_18s_he_normal_truncated_at_two_std_and_zero_biases(layer, fan_in):
    """TF 1.8's variance_scaling_initializer(scale=2.0, mode='fan_in', distribution='normal') draws a normal of
    std sqrt(2 / fan_in) and redraws beyond two of them: the draws' std is 0.8796 times that."""
    torch.manual_seed(0)
    module = getattr(build("lenet"), layer)
    std = (2 / fan_in) ** 0.5
    assert module.weight.abs().max().item() <= 2 * std
    assert module.weight.abs().max().item() > 1.9 * std
    assert module.weight.std().item() == pytest.approx(0.8796 * std, rel=0.05)
    assert torch.count_nonzero(module.bias) == 0


# --- normalisation inside the model ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mnist"])
def test_model_with_mean_and_std_equals_same_weights_on_normalised_input(name):
    torch.manual_seed(0)
    channels = 1 if name == "mnist" else 3
    size = 28 if name == "mnist" else 32
    mean = (0.49, 0.48, 0.45)[:channels]
    std = (0.25, 0.24, 0.26)[:channels]
    normalising = MODELS[name](num_classes=10, mean=mean, std=std).to(DEVICE)
    for m in normalising.modules():  # make the weights non-trivial (MNIST head is zero, BN is identity)
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    plain = MODELS[name](num_classes=10, mean=(0.0,) * channels, std=(1.0,) * channels).to(DEVICE)
    weights = {k: v for k, v in normalising.state_dict().items() if not k.startswith("normalize.")}
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    assert sorted(missing) == ["normalize.mean", "normalize.std"] and not unexpected
    normalising.eval(), plain.eval()

    x = torch.rand(4, channels, size, size, device=DEVICE)
    m = torch.tensor(mean, device=DEVICE).view(1, -1, 1, 1)
    s = torch.tensor(std, device=DEVICE).view(1, -1, 1, 1)
    with torch.no_grad():
        a, b = normalising(x), plain((x - m) / s)
    assert a.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # and it does matter: the unnormalised input gives something else
    with torch.no_grad():
        assert not torch.allclose(plain(x), a, atol=1e-3)


def test_normalisation_statistics_live_in_the_state_dict_and_follow_the_model():
    model = MODELS["resnet20"](num_classes=10, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)).to(DEVICE)
    state = model.state_dict()
    assert torch.allclose(state["normalize.mean"].flatten(), torch.tensor([0.1, 0.2, 0.3], device=DEVICE))
    assert torch.allclose(state["normalize.std"].flatten(), torch.tensor([0.4, 0.5, 0.6], device=DEVICE))
    assert not any(k.startswith("normalize.") for k, _ in model.named_parameters())  # buffers, not trained
    other = MODELS["resnet20"](num_classes=10).to(DEVICE)
    other.load_state_dict(state)
    assert torch.equal(other.normalize.mean, model.normalize.mean)
    assert model.to(torch.float64).normalize.std.dtype == torch.float64
