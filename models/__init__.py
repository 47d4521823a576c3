"""Model registry: CLI name -> constructor(num_classes, mean, std).

Every network but `lenet` is the ALP reference's network, parameter for parameter: its state_dict, less the two
`normalize` buffers, has the reference's key names and shapes, so a reference `paras.pt` loads into it.
`lenet` is the MNIST network of Mosbach et al. 2018, whose logit-pairing table reproduce.py reproduces.
Every model takes images in [0, 1] and normalises them itself (first layer), so attacks, epsilons and users
never see normalised pixels; the reference normalises outside its networks, with the same constants (see
data.DATASETS). A model knows nothing of data sets or attacks: the caller passes the channel mean/std.
"""
from functools import partial

from .lenet import LeNet
from .mnist import MnistNet
from .resnet import CifarResNet, ResNet

MODELS = {
    # He et al. 2016, Sec. 4.2: 6n+2 layers, n basic blocks per stage.
    "resnet20": partial(CifarResNet, blocks_per_stage=3),
    "resnet32": partial(CifarResNet, blocks_per_stage=5),
    "resnet44": partial(CifarResNet, blocks_per_stage=7),
    "resnet56": partial(CifarResNet, blocks_per_stage=9),
    "resnet110": partial(CifarResNet, blocks_per_stage=18),
    # torchvision's ResNets with a 3x3 stem and no max-pool, the reference's choice for 32x32 inputs.
    "resnet18": partial(ResNet, blocks_per_stage=(2, 2, 2, 2)),
    "resnet34": partial(ResNet, blocks_per_stage=(3, 4, 6, 3)),
    "mnist": MnistNet,
    # Mosbach et al. 2018's LeNet (their CLP, LSQ and ALP models on MNIST); for 28x28 images.
    "lenet": LeNet,
}
