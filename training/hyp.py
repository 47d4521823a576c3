"""The tables of training: the defaults of ALP.py's flags by data set, and what ALP.py fixes without a flag,
each value with its source or reason."""

# Attacks that may make the training pairs (names in attacks.ATTACKS).
TRAINING_ATTACKS = ("pgd-linf", "pgd-l2")

# The defaults of ALP.py's training flags, by data-set family (data.DATASETS[...].family: "cifar" for cifar10,
# cifar100 and svhn, "mnist" for mnist and fashionmnist); a flag given on the command line wins. Values are
# written as on the command line and parsed by the flag's own type. Source: the reference implementation
# (MTandHJ/PyTorch-Robust, ALP/README.md's commands, and ALP/ALP.py's argparse defaults for what its CIFAR
# command leaves out); it has no SVHN command, and SVHN's images are CIFAR's shape.
TRAINING_DEFAULTS = {
    "cifar": {  # its CIFAR-10/100 command: -lp=AT --epochs=200 -wd=0.0002 --leverage=0.5; the rest its defaults
        "learning_policy": "AT", "epochs": 200, "weight_decay": 2e-4, "leverage": 0.5,
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "batch_size": 128,
        "epsilon": "8/255", "steps": 10, "stepsize": "2/255",
    },
    "mnist": {  # its MNIST and FashionMNIST command, all of it
        "learning_policy": "null", "epochs": 84, "weight_decay": 0, "leverage": 0.5,
        "optimizer": "adam", "lr": 1e-4, "momentum": 0, "batch_size": 50,
        "epsilon": 0.3, "steps": 40, "stepsize": 0.01,
    },
}

# What ALP.py fixes without a flag, each with its reason.
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
