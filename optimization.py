"""The optimisers and learning-rate schedules that ALP.py's --optimizer and -lp name.

The schedules are the reference implementation's (its LEARNING_POLICY table), under its names; each is
stepped once at the end of every epoch. A milestone m means that epochs m, m+1, ... (counting from 0) run at
the reduced rate.
"""
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR


def sgd(params, lr, weight_decay, momentum, fused=False):
    """SGD with heavy-ball momentum (no Nesterov), weight decay as an L2 term in the update, as the reference.
    fused: one kernel for the whole update, reading the learning rate from a device tensor, which is what a
    captured CUDA graph needs (cuda_graph.GraphedStep)."""
    return _keeping_own_kernels(torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                                fused=fused or None))


def adam(params, lr, weight_decay, betas, fused=False):
    """Adam (L2 weight decay, not AdamW's decoupled one), as the reference. fused as for sgd; a fused Adam must
    also be capturable, or its step() refuses to be recorded in a CUDA graph."""
    return _keeping_own_kernels(torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay,
                                                 fused=fused or None, capturable=fused))


OPTIMIZERS = {"sgd": sgd, "adam": adam}
# The options of ALP.py that each optimiser reads beside -lr and -wd (by argument name): SGD's heavy-ball
# momentum, Adam's two decay rates. Each is refused with the optimiser that has no use for it, and is not
# compared on --resume of a run of that optimiser.
OWN_OPTIONS = {"sgd": ("momentum",), "adam": ("beta1", "beta2")}


def unread_options(name):
    """The options in OWN_OPTIONS that the optimiser `name` does not read (those of the others)."""
    return {option for other, options in OWN_OPTIONS.items() if other != name for option in options}


def own_options(name, momentum, beta1, beta2):
    """The keyword arguments of OPTIMIZERS[name] beyond lr and weight_decay."""
    return {"sgd": {"momentum": momentum}, "adam": {"betas": (beta1, beta2)}}[name]


def _keeping_own_kernels(optimizer):
    """Which kernel runs the update (fused or not) is a choice of this run, not state to restore: a run may
    be resumed with or without --cuda-graph (a checkpoint's flag would otherwise override it, and a graph
    cannot capture the unfused update with a tensor learning rate)."""
    def keep_own_kernels(optimizer, state_dict):
        groups = [{**saved, **{key: own[key] for key in ("fused", "foreach", "capturable") if key in own}}
                  for saved, own in zip(state_dict["param_groups"], optimizer.param_groups)]
        return {**state_dict, "param_groups": groups}

    optimizer.register_load_state_dict_pre_hook(keep_own_kernels)
    return optimizer


def _multi_step(milestones, gamma=0.1):
    return lambda optimizer, epochs: MultiStepLR(optimizer, milestones, gamma)


# name -> (optimizer, total epochs) -> scheduler. The sources are the reference's labels of its configs.
LEARNING_POLICIES = {
    "null": _multi_step([]),                         # a constant rate (the reference's MNIST runs use it)
    "AT": _multi_step([102, 154]),                   # "AT learning policy, an official config": 200 epochs
    "STD": _multi_step([82, 123]),                   # the reference's "STD": standard training's schedule
    "STD-wrn": _multi_step([60, 120, 160], gamma=0.2),  # "STD-wrn": the wide-ResNet schedule, x0.2 each time
    "TRADES": _multi_step([75, 90, 100]),            # "TRADES learning policy, an official config"
    "TRADES-M": _multi_step([55, 75, 90]),           # "TRADES-M ..., an official config for MNIST"
    # The reference's cosine annealing runs to zero over its 200 epochs; here over the run's --epochs.
    "cosine": lambda optimizer, epochs: CosineAnnealingLR(optimizer, T_max=epochs),
}
