"""Adversarial Logit Pairing (Kannan, Kurakin & Goodfellow, 2018).

Train on each clean batch and its PGD adversarial twin, and pull the two sets of logits together:

    loss = clean_weight * CE(f(x), y) + adv_weight * CE(f(x_adv), y) + leverage * MSE(f(x_adv), f(x))

with --clean-weight and --adv-weight 1 (the reference's loss) unless given: 0.5 and 0.5 make Mosbach et al.'s
"50% AT", 0 and 1 their "100% AT", 1 and 0 with --leverage > 0 their "Plain + ALP"; --leverage 0 drops the
pairing (plain adversarial training).

One process:  python ALP.py resnet32 cifar10 -lp=AT --epochs=200 -wd=0.0002 --leverage=0.5
K processes:  torchrun --nproc_per_node=K ALP.py resnet32 cifar10 ...   (one per GPU; gloo on CPU)
"""
from interrupts import stop_in_one_line

if __name__ == "__main__":
    stop_in_one_line()  # first: a Ctrl-C while torch imports ends in one line too

from attacks import ATTACKS
from training import loop
from training.alp import train_step  # the loss and the step, in training/ because bench.py times them too


def make_iteration(args, optimizer, autocast):
    """ALP's iteration with this run's values (training/loop.py): the PGD pair, the loss, the optimiser step."""
    attack = ATTACKS[args.attack](args.epsilon, steps=args.steps, stepsize=args.stepsize)

    def iteration(train_model, attack_model, x, y):
        return train_step(train_model, attack_model, attack, optimizer, x, y, args.leverage, autocast,
                          args.clean_weight, args.adv_weight)
    return iteration


def main(argv=None):
    """Train as the command line says; returns the trained model, or None when --resume finds the run
    finished."""
    return loop.main(argv, "ALP", __doc__, make_iteration)


if __name__ == "__main__":
    main()
