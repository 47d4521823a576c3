"""The ALP objective and one training iteration: the algorithm itself.

ALP.py trains through `train_step`, and so does bench.py, which times it (directly and recorded as a CUDA
graph by cuda_graph.GraphedStep): one definition, so that what bench.py times is what ALP.py runs.
"""
from contextlib import nullcontext

import torch.nn.functional as F


def alp_loss(model, x, x_adv, y, leverage, clean_weight=1.0, adv_weight=1.0):
    """The ALP objective and the adversarial logits:

        clean_weight * CE(f(x), y) + adv_weight * CE(f(x_adv), y) + leverage * MSE(f(x_adv), f(x))

    With the weights 1 and 1, the reference's loss. Mosbach et al.'s table names its variants by these
    weights: "50% AT" weighs both cross-entropies, "100% AT" the adversarial one alone, "Plain" the clean one
    alone; "+ ALP" adds the pairing term (leverage > 0).

    Two forward passes, not one on the concatenated batch: BatchNorm normalises the clean and the
    adversarial half each with its own statistics, as the reference does. Logits go to float32 before the
    losses, so bf16 autocast never reaches them."""
    logits_nat = model(x).float()
    logits_adv = model(x_adv).float()
    loss = (clean_weight * F.cross_entropy(logits_nat, y) + adv_weight * F.cross_entropy(logits_adv, y)
            + leverage * F.mse_loss(logits_adv, logits_nat))  # MSE averaged over all logits
    return loss, logits_adv


def train_step(train_model, attack_model, attack, optimizer, x, y, leverage, autocast=nullcontext, clean_weight=1.0,
               adv_weight=1.0):
    """One ALP iteration: make the PGD pair, compute the loss, step. `attack_model` is the network without
    the DistributedDataParallel wrapper that `train_model` may carry: attacks need no gradient
    synchronisation."""
    with autocast():
        x_adv = attack(attack_model, x, y)  # eval mode, gradient w.r.t. the input only
    train_model.train()
    with autocast():
        loss, logits_adv = alp_loss(train_model, x, x_adv, y, leverage, clean_weight, adv_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits_adv.detach()
