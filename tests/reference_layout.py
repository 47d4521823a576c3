"""The ALP reference's networks as key -> shape tables, written from the facts of issue 9 (read from the
reference's code), never from our models: what a reference `paras.pt` holds. Also `reference_logits`, the
reference's forward pass written with torch.nn.functional on such a state_dict, normalisation outside."""
import torch
import torch.nn.functional as F

# (mean, std) the reference normalises its inputs with, outside the network (issue 9).
REFERENCE_NORMALISATION = {
    "mnist": ((0.0,), (1.0,)),
    "fashionmnist": ((0.0,), (1.0,)),
    "svhn": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cifar10": ((0.4914, 0.4824, 0.4467), (0.2471, 0.2435, 0.2617)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}

CIFAR_RESNET_BLOCKS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
TORCHVISION_RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm(name, channels):
    return {f"{name}.weight": (channels,), f"{name}.bias": (channels,), f"{name}.running_mean": (channels,),
            f"{name}.running_var": (channels,), f"{name}.num_batches_tracked": ()}


def _basic_blocks(widths, blocks_per_stage, shortcut):
    """layer{1..}.{block}.conv1/bn1/conv2/bn2 and, where the block changes the shape, `shortcut(prefix,
    in, out)`: stride 2 at the first block of every stage but the first."""
    keys, cin = {}, widths[0]
    for stage, (width, blocks) in enumerate(zip(widths, blocks_per_stage), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            keys[f"{prefix}.conv1.weight"] = (width, cin, 3, 3)
            keys.update(batchnorm(f"{prefix}.bn1", width))
            keys[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            keys.update(batchnorm(f"{prefix}.bn2", width))
            if cin != width:
                keys.update(shortcut(prefix, cin, width))
            cin = width
    return keys


def reference_layout(name, num_classes=10):
    """{key: shape} of the reference's state_dict for MODELS[name]."""
    if name in CIFAR_RESNET_BLOCKS:
        n = CIFAR_RESNET_BLOCKS[name]
        return {"conv0.weight": (16, 3, 3, 3), **batchnorm("bn0", 16),
                **_basic_blocks((16, 32, 64), (n, n, n),
                                lambda prefix, cin, cout: {f"{prefix}.shortway.weight": (cout, cin, 1, 1)}),
                "fc.weight": (num_classes, 64), "fc.bias": (num_classes,)}
    if name in TORCHVISION_RESNET_BLOCKS:
        return {"conv1.weight": (64, 3, 3, 3), **batchnorm("bn1", 64),
                **_basic_blocks((64, 128, 256, 512), TORCHVISION_RESNET_BLOCKS[name],
                                lambda prefix, cin, cout: {f"{prefix}.downsample.0.weight": (cout, cin, 1, 1),
                                                           **batchnorm(f"{prefix}.downsample.1", cout)}),
                "fc.weight": (num_classes, 512), "fc.bias": (num_classes,)}
    assert name == "mnist", name
    return {"conv.0.weight": (32, 1, 3, 3), "conv.0.bias": (32,), "conv.2.weight": (32, 32, 3, 3),
            "conv.2.bias": (32,), "conv.5.weight": (64, 32, 3, 3), "conv.5.bias": (64,),
            "conv.7.weight": (64, 64, 3, 3), "conv.7.bias": (64,), "dense.0.weight": (200, 1024),
            "dense.0.bias": (200,), "dense.3.weight": (200, 200), "dense.3.bias": (200,),
            "fc.weight": (num_classes, 200), "fc.bias": (num_classes,)}


def parameter_count(layout):
    """Trainable numbers in a layout: everything but the BatchNorm running statistics."""
    return sum(torch.Size(shape).numel() for key, shape in layout.items()
               if not key.endswith(BATCHNORM_BUFFERS))


def random_reference_state_dict(name, num_classes=10, seed=0, device="cpu"):
    """A state_dict in the reference's format with non-trivial values everywhere (BatchNorm statistics
    included), as a trained paras.pt would hold."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    state = {}
    for key, shape in reference_layout(name, num_classes).items():
        if key.endswith("num_batches_tracked"):
            value = torch.tensor(100, dtype=torch.long)
        elif key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=generator)
        elif key.endswith(("running_mean", "bias")):
            value = 0.1 * torch.randn(shape, generator=generator)
        elif len(shape) == 1:  # BatchNorm weight
            value = 1 + 0.1 * torch.randn(shape, generator=generator)
        else:  # He-scaled weights keep the activations of deep nets in a sensible range
            fan_in = torch.Size(shape[1:]).numel()
            value = torch.randn(shape, generator=generator) * (2 / fan_in) ** 0.5
        state[key] = value.to(device)
    return state


def reference_logits(name, state, x, dataset):
    """The reference's eval-mode forward pass on images x in [0, 1]: normalise outside the network, then the
    network of issue 9 written out with functional calls on the state_dict's tensors."""
    mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in REFERENCE_NORMALISATION[dataset])
    x = (x - mean) / std
    if name == "mnist":
        for conv, pool in (("conv.0", False), ("conv.2", True), ("conv.5", False), ("conv.7", True)):
            x = F.relu(F.conv2d(x, state[f"{conv}.weight"], state[f"{conv}.bias"]))
            x = F.max_pool2d(x, 2) if pool else x
        x = F.relu(F.linear(x.flatten(1), state["dense.0.weight"], state["dense.0.bias"]))
        x = F.relu(F.linear(x, state["dense.3.weight"], state["dense.3.bias"]))  # dropout: eval mode
        return F.linear(x, state["fc.weight"], state["fc.bias"])

    def bn(x, prefix):
        return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False)

    stem = "0" if name in CIFAR_RESNET_BLOCKS else "1"
    x = F.relu(bn(F.conv2d(x, state[f"conv{stem}.weight"], padding=1), f"bn{stem}"))
    stage = 1
    while f"layer{stage}.0.conv1.weight" in state:
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in state:
            prefix = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.relu(bn(F.conv2d(x, state[f"{prefix}.conv1.weight"], stride=stride, padding=1), f"{prefix}.bn1"))
            out = bn(F.conv2d(out, state[f"{prefix}.conv2.weight"], padding=1), f"{prefix}.bn2")
            if f"{prefix}.shortway.weight" in state:
                x = F.conv2d(x, state[f"{prefix}.shortway.weight"], stride=stride)
            elif f"{prefix}.downsample.0.weight" in state:
                x = bn(F.conv2d(x, state[f"{prefix}.downsample.0.weight"], stride=stride), f"{prefix}.downsample.1")
            x = F.relu(out + x)
            block += 1
        stage += 1
    return F.linear(x.mean(dim=(2, 3)), state["fc.weight"], state["fc.bias"])
