"""The model registry: architectures (output shapes, parameter counts that follow from the layer layout),
the zero-initialised MNIST head, and normalisation inside the model."""
import pytest
import torch
from torch import nn

from models import MODELS
from models.mnist import MnistNet
from models.resnet import CifarResNet, ResNet

CIFAR_RESNETS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
IMAGENET_RESNETS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Forward passes of deep nets on a busy 2-core machine: one intra-op thread is ~100x faster than two
    threads spin-waiting on each other; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def expected_resnet_params(widths, blocks_per_stage, num_classes, in_channels=3):
    """Parameter count of a ResNet of basic blocks, from its layout alone: a bias-free 3x3 stem conv + BN,
    per block two bias-free 3x3 convs + two BNs, a bias-free 1x1 conv + BN projection shortcut wherever the
    block changes the width or the resolution (first block of every stage but the first), and a linear
    classifier on the globally pooled last stage. A BatchNorm has 2 parameters (weight, bias) per channel."""
    def conv(cin, cout, k):
        return cin * cout * k * k

    def bn(c):
        return 2 * c

    total = conv(in_channels, widths[0], 3) + bn(widths[0])
    cin = widths[0]
    for stage, (width, blocks) in enumerate(zip(widths, blocks_per_stage)):
        for block in range(blocks):
            total += conv(cin, width, 3) + bn(width) + conv(width, width, 3) + bn(width)
            if cin != width or (stage > 0 and block == 0):
                total += conv(cin, width, 1) + bn(width)
            cin = width
    return total + widths[-1] * num_classes + num_classes


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def build(name, num_classes=10):
    channels = 1 if name == "mnist" else 3
    return MODELS[name](num_classes=num_classes, mean=(0.5,) * channels, std=(0.25,) * channels)


def test_registry_holds_exactly_the_documented_models():
    assert set(MODELS) == set(CIFAR_RESNETS) | set(IMAGENET_RESNETS) | {"mnist"}


# --- CIFAR ResNets (He et al. 2016, Sec. 4.2) ------------------------------------------------------------

@pytest.mark.parametrize("name,n", CIFAR_RESNETS.items())
def test_cifar_resnet_has_6n_plus_2_weighted_layers_in_three_stages_of_16_32_64_channels(name, n):
    model = build(name)
    assert isinstance(model, CifarResNet)
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs3) + len(linears) == 6 * n + 2 == int(name[len("resnet"):])
    # stem 16, then 2n convs at each of 16, 32, 64 channels
    assert [c.out_channels for c in convs3] == [16] + [16] * 2 * n + [32] * 2 * n + [64] * 2 * n
    # the only projection shortcuts are at the two stage transitions
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(p.in_channels, p.out_channels, p.stride) for p in projections] == [(16, 32, (2, 2)), (32, 64, (2, 2))]


@pytest.mark.parametrize("name,n", CIFAR_RESNETS.items())
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_resnet_parameter_count_follows_from_its_layout(name, n, num_classes):
    model = build(name, num_classes)
    assert n_params(model) == expected_resnet_params((16, 32, 64), (n,) * 3, num_classes)


def test_resnet32_has_the_documented_0_46_million_parameters():
    # stem 432+32, stage 1: 5 x (2*16*16*9 + 64) = 23,360, stage 2: 14,528 (first block incl. 1x1
    # projection 512+64) + 4 x 18,560, stage 3: 57,728 (incl. projection 2,048+128) + 4 x 73,984,
    # fc 64*10+10 = 650: 466,906 in all.
    assert n_params(build("resnet32")) == 466_906


# --- ImageNet-layout ResNets for 32x32 inputs ------------------------------------------------------------

@pytest.mark.parametrize("name,blocks", IMAGENET_RESNETS.items())
@pytest.mark.parametrize("num_classes", [10, 100])
def test_imagenet_resnet_parameter_count_follows_from_its_layout(name, blocks, num_classes):
    model = build(name, num_classes)
    assert isinstance(model, ResNet)
    assert n_params(model) == expected_resnet_params((64, 128, 256, 512), blocks, num_classes)


def test_resnet18_has_the_documented_11_2_million_parameters():
    # The torchvision resnet18 body (11,176,512 with its 7x7 stem and 1000-way fc) with a 3x3 stem
    # (1,728 instead of 9,408 weights) and a 512*10+10 classifier: 11,173,962.
    assert n_params(build("resnet18")) == 11_173_962


def test_resnet_stem_is_3x3_without_max_pool():
    for name in ("resnet18", "resnet34"):
        model = build(name)
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first.kernel_size == (3, 3) and first.stride == (1, 1)
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


# --- output shapes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CIFAR_RESNETS) + list(IMAGENET_RESNETS))
@pytest.mark.parametrize("num_classes", [10, 100])
def test_resnet_maps_32x32_colour_images_to_one_logit_per_class(name, num_classes):
    model = build(name, num_classes).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_mnist_net_maps_28x28_grey_images_to_ten_logits():
    model = build("mnist").eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 28, 28))
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
    order = [m for m in model.classifier if isinstance(m, (nn.Linear, nn.Dropout))]
    assert [type(m) for m in order] == [nn.Linear, nn.Dropout, nn.Linear, nn.Linear]


def test_mnist_net_parameter_count_follows_from_its_layout():
    convs = (1 * 32 * 9 + 32) + (32 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64)
    fcs = (1024 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)
    assert convs + fcs == 312_202
    assert n_params(build("mnist")) == 312_202


def test_mnist_net_last_layer_starts_at_zero_so_initial_outputs_are_all_zero():
    model = build("mnist")
    assert torch.count_nonzero(model.classifier[-1].weight) == 0
    assert torch.count_nonzero(model.classifier[-1].bias) == 0
    for mode in (model.eval, model.train):  # with or without dropout
        mode()
        out = model(torch.rand(4, 1, 28, 28))
        assert torch.equal(out, torch.zeros(4, 10))
    # ...but the layers before it are not degenerate: the head gets gradient
    out = model(torch.rand(4, 1, 28, 28))
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    assert model.classifier[-1].weight.grad.abs().sum() > 0


def test_mnist_net_dropout_is_active_only_in_training_mode():
    torch.manual_seed(0)
    model = build("mnist")
    nn.init.normal_(model.classifier[-1].weight)
    x = torch.rand(2, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))


# --- normalisation inside the model ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mnist"])
def test_model_with_mean_and_std_equals_same_weights_on_normalised_input(name):
    torch.manual_seed(0)
    channels = 1 if name == "mnist" else 3
    size = 28 if name == "mnist" else 32
    mean = (0.49, 0.48, 0.45)[:channels]
    std = (0.25, 0.24, 0.26)[:channels]
    normalising = MODELS[name](num_classes=10, mean=mean, std=std)
    for m in normalising.modules():  # make the weights non-trivial (MNIST head is zero, BN is identity)
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    plain = MODELS[name](num_classes=10, mean=(0.0,) * channels, std=(1.0,) * channels)
    weights = {k: v for k, v in normalising.state_dict().items() if not k.startswith("normalize.")}
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    assert sorted(missing) == ["normalize.mean", "normalize.std"] and not unexpected
    normalising.eval(), plain.eval()

    x = torch.rand(4, channels, size, size)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        a, b = normalising(x), plain((x - m) / s)
    assert a.abs().max() > 0
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # and it does matter: the unnormalised input gives something else
    with torch.no_grad():
        assert not torch.allclose(plain(x), a, atol=1e-3)


def test_normalisation_statistics_live_in_the_state_dict_and_follow_the_model():
    model = MODELS["resnet20"](num_classes=10, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    state = model.state_dict()
    assert torch.allclose(state["normalize.mean"].flatten(), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(state["normalize.std"].flatten(), torch.tensor([0.4, 0.5, 0.6]))
    assert not any(k.startswith("normalize.") for k, _ in model.named_parameters())  # buffers, not trained
    other = MODELS["resnet20"](num_classes=10)
    other.load_state_dict(state)
    assert torch.equal(other.normalize.mean, model.normalize.mean)
    assert model.to(torch.float64).normalize.std.dtype == torch.float64
