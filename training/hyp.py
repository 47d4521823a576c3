"""The tables of training: the defaults of ALP.py's, CLP.py's and LSQ.py's flags by data set, and what the
training loop fixes without a flag, each value with its source or reason."""

# Attacks that may make the training pairs (names in attacks.ATTACKS).
TRAINING_ATTACKS = ("pgd-linf", "pgd-l2")

# The defaults of ALP.py's training flags, by data-set family (data.DATASETS[...].family: "cifar" for cifar10,
# cifar100 and svhn, "mnist" for mnist and fashionmnist); a flag given on the command line wins. Values are
# written as on the command line and parsed by the flag's own type. Source: the reference implementation
# (MTandHJ/PyTorch-Robust, ALP/README.md's commands, and ALP/ALP.py's argparse defaults for what its CIFAR
# command leaves out); it has no SVHN command, and SVHN's images are CIFAR's shape.
# Both families weigh the clean and the adversarial cross-entropy 1 each, as the reference's loss does.
TRAINING_DEFAULTS = {
    "cifar": {  # its CIFAR-10/100 command: -lp=AT --epochs=200 -wd=0.0002 --leverage=0.5; the rest its defaults
        "learning_policy": "AT", "epochs": 200, "weight_decay": 2e-4, "leverage": 0.5,
        "clean_weight": 1, "adv_weight": 1,
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 128,
        "epsilon": "8/255", "steps": 10, "stepsize": "2/255",
    },
    "mnist": {  # its MNIST and FashionMNIST command, all of it
        "learning_policy": "null", "epochs": 84, "weight_decay": 0, "leverage": 0.5,
        "clean_weight": 1, "adv_weight": 1,
        "optimizer": "adam", "lr": 1e-4, "momentum": 0, "batch_size": 50,
        "epsilon": 0.3, "steps": 40, "stepsize": 0.01,
    },
}

# The defaults of CLP.py's and LSQ.py's flags, by data-set family as above. Source: Mosbach et al. 2018's code
# (uds-lsv/evaluating-logit-pairing-methods, commit 201d3c0, mnist_cifar10/): train.py's argparse defaults
# (Adam lr 1e-3, batch 256, weight decay 0, no schedule, noise std 0.5, LSQ's lambda 0.5) and train.sh's 100
# epochs, for the MNIST LeNet of their table. Their Adam's epsilon is TensorFlow's 1e-6; ours keeps PyTorch's
# 1e-8 (optimization.py has no flag for it), a difference only where a gradient's running scale nears 1e-6.
# CLP's lambda: their MNIST code leaves it at 0.0 (--clp_lambda, set per run, not recorded); the only value
# their code fixes for a logit-pairing weight is 0.5 (tiny_imagenet/train.sh's train_lp_weight, "strength of
# LSQ/CLP/ALP regularization"), the same as LSQ's. Their train.py takes the same defaults for CIFAR-10 (their
# ResNet20_v2); train.sh names MNIST's epochs only.
NOISE_TRAINING = {"learning_policy": "null", "epochs": 100, "weight_decay": 0, "optimizer": "adam", "lr": 1e-3,
                  "momentum": 0, "batch_size": 256, "noise_std": 0.5}
CLP_DEFAULTS = {family: {**NOISE_TRAINING, "pairing_weight": 0.5} for family in ("cifar", "mnist")}
LSQ_DEFAULTS = {family: {**NOISE_TRAINING, "squeeze_weight": 0.5} for family in ("cifar", "mnist")}

# Each training script's table of defaults, by its method's name.
METHOD_DEFAULTS = {"ALP": TRAINING_DEFAULTS, "CLP": CLP_DEFAULTS, "LSQ": LSQ_DEFAULTS}

# What the training loop fixes without a flag, each with its reason.
HYP = {
    # The attack that measures robust accuracy after each epoch, by data-set family: eval.py's column of
    # this label in its ℓ∞ table (evaluation/suite.py), at the table's first epsilon. The reference
    # validates with the same attacks (its VALIDER table), so that our validation curves compare with its
    # logs and with what eval.py will report.
    "validation_attack": {"cifar": "PGD-10", "mnist": "PGD-100"},
    # Images per validation batch: no weight gradients are kept, so it can be wider than training's. On a
    # GPU 2000 is chosen, not measured: a wider batch launches fewer kernels per image, and resnet18's PGD
    # at 2000 images should need a few GB. On a CPU, wider batches are slower per image: PGD-100 in float32
    # on 1000 real-MNIST test images took 37.8-40.6 s in batches of 100 against 55.6-56.7 s in batches of
    # 500 (an ALP-trained MNIST net, one thread, this project's shared 2-core machine).
    "validation_batch": {"cuda": 2000, "cpu": 100},
    # The time estimate waits for this many training batches after the first (which pays one-off costs:
    # oneDNN's or cuDNN's choice of kernels, compilation, a CUDA graph's recording), or this many seconds of
    # them, whichever comes first.
    "timed_batches": 3,
    "timed_seconds": 15,
    # Epochs between the epoch_NNN.pt copies of the weights: 40 files over a 200-epoch run, enough to
    # look back at robust overfitting without filling the disk.
    "snapshot_every": 5,
}
