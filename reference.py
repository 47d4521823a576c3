"""The reference implementation's published tables, as data: one entry per training run it reports, with the
command that trains it, the attacks of its table (as eval.py names them) and its figures.

Source: MTandHJ/PyTorch-Robust, ALP/README.md at commit 807ed31 (SOURCE below), copied figure by figure. Later
commits of that file changed it: d8017a1 wrote the CIFAR commands with resnet18, and 3b2311e replaced these
tables by one ResNet18 row (ℓ∞ 8/255, clean and AutoAttack only, last and best epoch). The tables below are
the last full ones, and the ones this repository's README quotes (tests/test_reproduce.py checks its
"Reference results" against them). Figures are robust accuracies in % on the full test split (10,000 images
for every data set here).
"""
from collections import namedtuple

from evaluation.suite import cli_name

SOURCE = {
    "repository": "MTandHJ/PyTorch-Robust",
    "file": "ALP/README.md",
    "commit": "807ed3184889afecb42048785054054587d9ffcb",
    "url": "https://github.com/MTandHJ/PyTorch-Robust/blob/807ed3184889afecb42048785054054587d9ffcb/ALP/README.md",
}

TEST_IMAGES = 10_000  # the test split of MNIST, FashionMNIST, CIFAR-10 and CIFAR-100

# A column of a table: its label as the reference prints it (and as eval.py's JSON labels it), the eval.py
# --attacks name that runs it, and the reference's figure.
Column = namedtuple("Column", "label attack figure")
# One threat model: the norm and ε (as eval.py's suite writes it), and its columns in the reference's order.
ThreatModel = namedtuple("ThreatModel", "norm epsilon columns")
# One training run of the reference and what its tables say of it. net: the network as the reference's tables
# name it; training: ALP.py's arguments; training_source: where that command comes from; clean: Nat(%).
Table = namedtuple("Table", "title dataset net leverage lp training training_source clean threat_models")

# The reference's commands, as its README writes them (less `python ALP.py`).
CIFAR_COMMAND = ["-lp=AT", "--epochs=200", "-wd=0.0002"]
MNIST_COMMAND = ["-lp=null", "--epochs=84", "-lr=0.0001", "-wd=0", "-mom=0", "--optimizer=adam", "-b=50",
                 "--epsilon=0.3", "--steps=40", "--stepsize=0.01", "--leverage=0.5"]


def cifar_table(name):
    """A CIFAR table from CIFAR_RUNS and CIFAR_FIGURES: ℓ∞ 8/255 and 16/255 (FGSM, PGD-10, PGD-40, DeepFool,
    AA), ℓ2 0.5 (PGD-50, DeepFool, C&W, AA), ℓ1 12 (PGD-50, SLIDE)."""
    dataset, net, leverage, training_source = CIFAR_RUNS[name]
    clean, linf_8, linf_16, l2, l1 = CIFAR_FIGURES[name]
    linf = ["FGSM", "PGD-10", "PGD-40", "DeepFool", "AA"]
    title = f"{'CIFAR-10' if dataset == 'cifar10' else 'CIFAR-100'}, {net}, leverage {leverage}"
    return Table(title, dataset, net, leverage, "AT",
                 [net.lower(), dataset, *CIFAR_COMMAND, f"--leverage={leverage}"], training_source, clean, [
                     ThreatModel("linf", "8/255", columns(linf, linf_8)),
                     ThreatModel("linf", "16/255", columns(linf, linf_16)),
                     ThreatModel("l2", "0.5", columns(["PGD-50", "DeepFool", "C&W", "AA"], l2)),
                     ThreatModel("l1", "12", columns(["PGD-50", "SLIDE"], l1))])


def mnist_table(title, dataset, clean, linf, l2, l1):
    """An MNIST-type table: ℓ∞ 0.3 (FGSM, PGD-50, PGD-100, DeepFool, AA), ℓ2 2 (PGD-100, DeepFool, C&W, AA),
    ℓ1 10 (PGD-50, SLIDE)."""
    return Table(title, dataset, "mnist", "0.5", "null", ["mnist", dataset, *MNIST_COMMAND],
                 f"the reference's {title} command, as written", clean, [
                     ThreatModel("linf", "0.3", columns(["FGSM", "PGD-50", "PGD-100", "DeepFool", "AA"], linf)),
                     ThreatModel("l2", "2", columns(["PGD-100", "DeepFool", "C&W", "AA"], l2)),
                     ThreatModel("l1", "10", columns(["PGD-50", "SLIDE"], l1))])


def columns(labels, figures):
    """Columns from labels and figures, each with the eval.py name of its label."""
    return [Column(label, cli_name(label), figure)
            for label, figure in zip(labels, figures, strict=True)]


# The reference's CIFAR runs: name -> (data set, network, leverage, where the training command comes from).
CIFAR_RUNS = {
    "cifar10-resnet32": ("cifar10", "ResNet32", "0.5", "the reference's CIFAR-10 command, as written"),
    "cifar10-resnet32-leverage1": ("cifar10", "ResNet32", "1",
                                   "the reference's CIFAR-10 command with --leverage=1, the rows' leverage"),
    "cifar10-resnet18": ("cifar10", "ResNet18", "0.5", "the reference's CIFAR-10 command with resnet18, the "
                         "rows' network (its later commit d8017a1 writes the command so)"),
    "cifar100-resnet18": ("cifar100", "ResNet18", "0.5", "the reference's CIFAR-100 command with resnet18, the "
                          "rows' network (this commit's command says resnet32; its later commit d8017a1 says "
                          "resnet18)"),
}
# Their figures, row by row as the reference prints them: Nat(%), ℓ∞ 8/255, ℓ∞ 16/255, ℓ2 0.5, ℓ1 12.
CIFAR_FIGURES = {
    "cifar10-resnet32": (80.70, [53.18, 47.76, 46.95, 49.54, 43.23], [33.85, 18.83, 16.55, 27.22, 12.27],
                         [56.22, 58.91, 54.26, 53.34], [55.68, 22.16]),
    "cifar10-resnet32-leverage1": (77.12, [54.04, 49.34, 48.61, 49.53, 44.89], [36.26, 22.35, 19.64, 28.56, 14.34],
                                   [56.34, 58.00, 53.91, 53.25], [55.69, 24.11]),
    "cifar10-resnet18": (85.07, [57.68, 48.32, 46.54, 54.59, 44.13], [41.54, 19.66, 15.77, 36.84, 10.67],
                         [57.19, 63.23, 56.32, 55.30], [57.55, 23.03]),
    "cifar100-resnet18": (55.71, [29.16, 25.83, 25.14, 25.32, 22.02], [17.21, 10.47, 9.37, 12.74, 7.15],
                          [32.38, 33.18, 30.21, 29.51], [32.93, 13.18]),
}

# reproduce.py's table names -> tables.
TABLES = {
    "mnist": mnist_table("MNIST", "mnist", 99.41, linf=[97.84, 96.71, 96.08, 97.17, 92.60],
                         l2=[95.72, 97.62, 89.07, 16.90], l1=[97.91, 90.74]),
    "fashionmnist": mnist_table("FashionMNIST", "fashionmnist", 83.08, linf=[68.21, 61.40, 55.82, 56.35, 24.25],
                                l2=[64.14, 66.16, 25.53, 2.35], l1=[65.74, 53.65]),
    **{name: cifar_table(name) for name in CIFAR_RUNS},
}


# --- Mosbach et al.'s MNIST table: the logit-pairing family under a stronger attack ---------------------------
# Mosbach, Andriushchenko, Trost, Hein & Klakow, "Logit Pairing Methods Can Fool Gradient-Based Attacks"
# (NeurIPS 2018 Workshop on Security in Machine Learning, arXiv 1810.12042). Figures copied from their README's
# MNIST table; settings read from their mnist_cifar10/ code at the same commit (train.py, train_utils.py,
# models.py, data_loader.py, eval.py, train.sh, eval.sh).
MOSBACH_SOURCE = {
    "repository": "uds-lsv/evaluating-logit-pairing-methods",
    "file": "README.md",
    "commit": "201d3c05b59bb92df267e3c0213a50081988e1bb",
    "url": "https://github.com/uds-lsv/evaluating-logit-pairing-methods/blob/"
           "201d3c05b59bb92df267e3c0213a50081988e1bb/README.md",
}

# Their evaluation's sample size (eval.sh --samples). Their code draws the 1,000 with replacement from the
# test split (numpy seed 123); reproduce.py takes the first 1,000 test images, a sample of the same size.
MOSBACH_IMAGES = 1_000

# What every row shares, from their train.py defaults and train.sh: Adam at lr 1e-3 (their epsilon 1e-6,
# PyTorch's 1e-8: not a flag here), batch 256, 100 epochs, a constant rate, no weight decay (--wd is on but
# --wd_lambda 0). Their training evaluates on its 1,000 test images each epoch. Our validation runs PGD-100 on
# the whole test split in float32: on an idle 2-core CPU (Xeon with AMX) one took 5.1-8.0 min against 14.7 s
# for a bf16 training epoch of the Plain and CLP rows, so the rows validate at the 50th and the last epoch only.
MOSBACH_COMMON = ["--optimizer=adam", "-lr=0.001", "-mom=0", "-b=256", "--epochs=100", "-wd=0", "-lp=null",
                  "--eval-freq=50"]
# The adversarial rows' PGD (train.py and train_utils.get_at_loss): ε 76.5/255 = 0.3, 40 steps of 2.55/255 =
# 0.01, from one random start in the ball.
MOSBACH_PGD = ["--epsilon=0.3", "--steps=40", "--stepsize=0.01"]
# Their MNIST code leaves the pairing weights of CLP and ALP at 0 (train.py's defaults; train.sh sets none)
# and their README gives none: 0.5 is the pairing weight of their Tiny ImageNet script (train.sh's
# train_lp_weight) and of the reference's MNIST command. Logit squeezing's 0.5 is train.py's own default.
MOSBACH_PAIRING_WEIGHT = "0.5"
# Gaussian noise of their data loader for CLP and LSQ (train.py's --stddev; added, then clipped to [0, 1]).
MOSBACH_NOISE_STD = "0.5"

# One row of their table: the row's name in their table, the script that trains it and its own flags (the
# network, data set, MOSBACH_COMMON and, for the adversarial rows, MOSBACH_PGD are added), and their figures
# in %: clean accuracy, robust accuracy under their baseline attack (PGD-40, one random start) and under
# their strongest (PGD with many iterations and restarts), both at ℓ∞ 0.3.
Row = namedtuple("Row", "title script flags clean baseline strongest")


def alp_row(title, clean_weight, adv_weight, pairing_weight, figures):
    """A row trained by ALP.py: the weights of the clean and the adversarial cross-entropy (their ct_lambda
    and at_lambda) and of the logit pairing (their alp_lambda; 0: none)."""
    return Row(title, "ALP.py", [f"--clean-weight={clean_weight}", f"--adv-weight={adv_weight}",
                                 f"--leverage={pairing_weight}", *MOSBACH_PGD], *figures)


MOSBACH_ROWS = {
    # Plain training is logit squeezing without the squeeze and without the noise: cross-entropy alone.
    "plain": Row("Plain", "LSQ.py", ["--squeeze-weight=0", "--noise-std=0"], 99.2, 0.0, 0.0),
    "clp": Row("CLP", "CLP.py", [f"--pairing-weight={MOSBACH_PAIRING_WEIGHT}", f"--noise-std={MOSBACH_NOISE_STD}"],
               98.8, 62.4, 4.1),
    "lsq": Row("LSQ", "LSQ.py", ["--squeeze-weight=0.5", f"--noise-std={MOSBACH_NOISE_STD}"], 98.8, 70.6, 5.0),
    # "Plain + ALP": the clean cross-entropy and the pairing, no adversarial cross-entropy (train.py with
    # --alp and without --at: get_alp_loss makes its own PGD pair).
    "plain-alp": alp_row("Plain + ALP", 1, 0, MOSBACH_PAIRING_WEIGHT, (98.5, 96.0, 88.9)),
    "at50-alp": alp_row("50% AT + ALP", 0.5, 0.5, MOSBACH_PAIRING_WEIGHT, (98.3, 97.2, 89.9)),
    "at50": alp_row("50% AT", 0.5, 0.5, 0, (99.1, 92.7, 88.2)),
    "at100-alp": alp_row("100% AT + ALP", 0, 1, MOSBACH_PAIRING_WEIGHT, (98.4, 96.6, 85.7)),
    "at100": alp_row("100% AT", 0, 1, 0, (98.9, 95.2, 88.0)),
}

# A published table of rows, each its own training run, all evaluated alike: reproduce.py's TABLE names.
# baseline: eval.py's name of their baseline attack; epsilon: the ℓ∞ ball of every figure.
# common: the flags every row's command ends with.
RowTable = namedtuple("RowTable", "title dataset net source images epsilon baseline common rows")
ROW_TABLES = {
    "mosbach-mnist": RowTable("Mosbach et al.'s MNIST logit-pairing table", "mnist", "lenet", MOSBACH_SOURCE,
                              MOSBACH_IMAGES, "0.3", "pgd-40", MOSBACH_COMMON, MOSBACH_ROWS),
}


def row_training(table, row):
    """The training command of one row (less `python SCRIPT`)."""
    return [table.net, table.dataset, *row.flags, *table.common]
