"""The training scripts' command line (ALP.py, CLP.py, LSQ.py): the flags they share and each method's own, the
defaults that depend on the data set (hyp.METHOD_DEFAULTS), the checks of what was given, and the way back to
an ALP run started under the former defaults."""
import argparse
import math
import os
import sys

import torch

from data import DATASETS
from evaluation.suite import epsilon_in_0_255_units
from models import MODELS
from optimization import LEARNING_POLICIES, OPTIMIZERS, OWN_OPTIONS, unread_options
from utils import CLIParser, default_device, fail, number, progress_wanted

from .hyp import METHOD_DEFAULTS, TRAINING_ATTACKS
from .records import run_name

# Adam's decay rates unless -beta1/-beta2 say otherwise: PyTorch's defaults, and the reference's.
ADAM_BETAS = {"beta1": 0.9, "beta2": 0.999}


def data_sets_of(family):
    return ", ".join(name for name, spec in DATASETS.items() if spec.family == family)


DATA_SET_DEFAULTS_NOTE = (
    f"Defaults that depend on the data set are the reference implementation's settings: its CIFAR command for "
    f"{data_sets_of('cifar')}, its MNIST command for {data_sets_of('mnist')} (the table, with its source: "
    f"TRAINING_DEFAULTS in training/hyp.py). A flag given on the command line wins; args.json records the "
    f"values that ran.")
NOISE_DEFAULTS_NOTE = (
    "Defaults are Mosbach et al.'s settings for their MNIST table (the table, with its source: CLP_DEFAULTS and "
    "LSQ_DEFAULTS in training/hyp.py). A flag given on the command line wins; args.json records the values that "
    "ran.")
DEFAULTS_NOTES = {"ALP": DATA_SET_DEFAULTS_NOTE, "CLP": NOISE_DEFAULTS_NOTE, "LSQ": NOISE_DEFAULTS_NOTE}


def data_set_default(dest, method="ALP"):
    """The help text's default of a flag whose default depends on the data set (hyp.METHOD_DEFAULTS)."""
    by_value = {}
    for family, defaults in METHOD_DEFAULTS[method].items():
        by_value.setdefault(str(defaults[dest]), []).append(data_sets_of(family))
    if len(by_value) == 1:
        return f"(default: {next(iter(by_value))})"
    return "(default: " + "; ".join(f"{value} for {', '.join(names)}" for value, names in by_value.items()) + ")"


def alp_flags(p, add):
    add("--leverage", type=float, help="weight of the logit-pairing term (0: plain AT on clean + adversarial "
        "halves)")
    add("--clean-weight", type=float, help="weight of the cross-entropy on the clean images (0: none)")
    add("--adv-weight", type=float, help="weight of the cross-entropy on the adversarial images (0: none)")
    p.add_argument("--attack", choices=TRAINING_ATTACKS, default="pgd-linf", help="attack that makes the pairs")
    add("--epsilon", type=number, help="radius of the attack's ball (number or fraction)")
    add("--stepsize", type=number, help="absolute PGD step size")
    add("--steps", type=int, help="PGD steps")


def alp_checks(args):
    return [(args.epsilon > 0, "--epsilon must be > 0"),
            (args.stepsize > 0, "--stepsize must be > 0"),
            (args.steps > 0, "--steps must be > 0"),
            (args.leverage >= 0, "--leverage must be >= 0"),
            (args.clean_weight >= 0, "--clean-weight must be >= 0"),
            (args.adv_weight >= 0, "--adv-weight must be >= 0"),
            (args.clean_weight + args.adv_weight + args.leverage > 0,
             "--clean-weight, --adv-weight and --leverage are all 0: the loss would be 0")]


NOISE_HELP = "std of the Gaussian noise added to each training image, which is then clipped to [0, 1] (0: none)"


def clp_flags(p, add):
    add("--noise-std", type=float, help=NOISE_HELP)
    add("--pairing-weight", type=float, help="weight of the clean logit-pairing term (0: cross-entropy alone)")


def clp_checks(args):
    return [(args.noise_std >= 0, "--noise-std must be >= 0"),
            (args.pairing_weight >= 0, "--pairing-weight must be >= 0")]


def lsq_flags(p, add):
    add("--noise-std", type=float, help=NOISE_HELP)
    add("--squeeze-weight", type=float, help="weight of the logit-squeezing term (0: cross-entropy alone)")


def lsq_checks(args):
    return [(args.noise_std >= 0, "--noise-std must be >= 0"),
            (args.squeeze_weight >= 0, "--squeeze-weight must be >= 0")]


# Each training script's own flags and their checks, by its method's name; the flags below are shared.
METHOD_FLAGS = {"ALP": (alp_flags, alp_checks), "CLP": (clp_flags, clp_checks), "LSQ": (lsq_flags, lsq_checks)}


def build_parser(description=None, method="ALP"):
    p = CLIParser(description=description, epilog=DEFAULTS_NOTES[method])

    def add(*flags, help, **kwargs):  # a flag whose default comes from the data set's row of the table
        action = p.add_argument(*flags, default=None, help=help, **kwargs)
        action.help = f"{help} {data_set_default(action.dest, method)}"

    p.add_argument("model", metavar="MODEL", choices=MODELS, help="network: " + ", ".join(MODELS))
    p.add_argument("dataset", metavar="DATASET", choices=DATASETS, help="data set: " + ", ".join(DATASETS))
    add_own_flags, _ = METHOD_FLAGS[method]
    add_own_flags(p, add)
    add("--optimizer", choices=OPTIMIZERS, help="optimiser")
    add("-mom", "--momentum", type=float, help="SGD's momentum (Adam has none: with adam only 0 is accepted)")
    for name, value in ADAM_BETAS.items():
        p.add_argument(f"-{name}", type=float, default=None,
                       help=f"Adam's {name} (refused with sgd) (default: {value})")
    add("-wd", "--weight_decay", type=float, help="weight decay (L2, in the optimiser)")
    add("-lr", "--lr", type=float, help="initial learning rate")
    add("-lp", "--learning_policy", choices=LEARNING_POLICIES,
        help="learning-rate schedule: " + ", ".join(LEARNING_POLICIES))
    add("--epochs", type=int, help="epochs to train")
    add("-b", "--batch_size", type=int, help="batch size per process: under torchrun the global batch is K times "
        "this")
    p.add_argument("--ratio", type=float, default=0.0,
                   help="share of the training split held out for validation (0: validate on the test split)")
    p.add_argument("--eval-freq", type=int, default=1, help="validate every this many epochs (and at the end)")
    p.add_argument("--resume", action="store_true", help="continue the run folder's last checkpoint")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars with rate and time left (default: on when stderr is a terminal; without them, "
                        "a progress line at least every minute)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (data order, PGD starts, "
                   "--subset, --ratio)")
    p.add_argument("--data-root", default="./data", help="folder of the data sets (downloaded there if absent)")
    p.add_argument("--out", default="./runs", help="parent folder of the run folders")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if present, else cpu)")
    p.add_argument("--subset", type=int, default=None,
                   help="use a seeded random, class-balanced N training and N validation images (quick trials)")
    speed = p.add_argument_group("speed options (bf16 on a GPU or a CPU with bf16 arithmetic, channels_last)")
    speed.add_argument("--no-amp", dest="amp", action="store_false",
                       help="float32 training forward passes instead of bf16 autocast (losses are float32 either "
                            "way; validation always runs in float32)")
    speed.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                       help="keep images and weights in the contiguous (NCHW) memory format")
    speed.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                       help="do not let cuDNN time its algorithms for each shape")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the model (inductor fuses the element-wise work between convolutions; "
                            "with the CUDA graph it is compiled during the warm-ups and recorded compiled)")
    speed.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                       help="replay each training iteration as one CUDA graph (default: on where it can run: a "
                            "CUDA device and one process; elsewhere the eager step runs); "
                            "--no-cuda-graph runs the eager step")
    return p


def typed_defaults(parser, family, method="ALP"):
    """A family's row of the method's table in hyp.METHOD_DEFAULTS, each value parsed by its flag's own type."""
    actions = {action.dest: action for action in parser._actions}
    return {dest: actions[dest].type(value) if actions[dest].type else value
            for dest, value in METHOD_DEFAULTS[method][family].items()}


def parse_command_line(argv=None, description=None, method="ALP"):
    """(arguments, the flags whose values came from the data set's defaults): the command line of the training
    script of `method` (a key of METHOD_FLAGS) checked, each flag left out given its data set's default
    (hyp.METHOD_DEFAULTS). The arguments name the method, which run folders and checkpoints record."""
    p = build_parser(description, method)
    args = p.parse_args(argv)
    args.method = method
    defaults = typed_defaults(p, DATASETS[args.dataset].family, method)
    filled = [dest for dest in defaults if getattr(args, dest) is None]
    for dest in filled:
        setattr(args, dest, defaults[dest])
    refuse_options_the_optimizer_ignores(p, args, given_momentum="momentum" not in filled)
    for name, value in ADAM_BETAS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("epsilon", "stepsize", "leverage", "clean_weight", "adv_weight", "noise_std", "pairing_weight",
                 "squeeze_weight", "lr", "momentum", "weight_decay", "beta1", "beta2", "ratio"):
        if hasattr(args, name) and not math.isfinite(getattr(args, name)):
            p.error(f"--{name.replace('_', '-')} must be a finite number, not {getattr(args, name)}")
    classes = DATASETS[args.dataset].num_classes
    _, own_checks = METHOD_FLAGS[method]
    checks = own_checks(args) + [
        (args.batch_size > 0, "--batch_size must be > 0"),
        (args.epochs > 0, "--epochs must be > 0"),
        (0 <= args.ratio < 1, "--ratio must lie in [0, 1)"),
        (args.eval_freq > 0, "--eval-freq must be > 0"),
        (args.subset is None or args.subset >= classes,
         f"--subset must be at least the number of classes of {args.dataset} ({classes}), so that each has one"),
        (args.lr > 0, "--lr must be > 0"),
        (args.weight_decay >= 0, "--weight_decay must be >= 0"),
        (not os.path.isfile(args.data_root), f"--data-root {args.data_root} is a file, not a folder"),
        (not os.path.isfile(args.out), f"--out {args.out} is a file, not a folder"),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    try:
        device = torch.device(args.device or default_device())
    except RuntimeError:
        p.error(f"--device {args.device!r} is not a device torch knows")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device {args.device}: this project trains on cpu or cuda devices")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is available to this torch; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        p.error(f"--device {args.device}: there are only {torch.cuda.device_count()} CUDA devices")
    args.device = str(device)
    if method == "ALP":
        too_large = epsilon_in_0_255_units(args.attack.removeprefix("pgd-"), f"{args.epsilon:g}", args.epsilon,
                                           DATASETS[args.dataset].shape)
        if too_large:
            p.error(f"--epsilon: {too_large}")
        if args.attack == "pgd-linf" and args.epsilon == 1:
            print("warning: --epsilon 1 lets ℓ∞ PGD reach any image in [0, 1] (written in 0-255 units? 8/255 is 8 "
                  "in those)", file=sys.stderr)
    if method == "ALP" and args.steps > 1000:
        print(f"warning: --steps {args.steps} makes every batch run {args.steps} forward and backward passes "
              f"before its step (the reference uses 10 for CIFAR, 40 for MNIST)", file=sys.stderr)
    args.progress = progress_wanted(args.progress)
    return args, filled


def refuse_options_the_optimizer_ignores(parser, args, given_momentum):
    """-beta1/-beta2 with SGD, or a momentum with Adam, would be recorded and do nothing: one line, exit 2.
    -mom 0 with Adam asks for nothing Adam does, and is the reference's own MNIST command: accepted."""
    if "momentum" not in OWN_OPTIONS[args.optimizer] and given_momentum and args.momentum != 0:
        parser.error(f"-mom {args.momentum:g} is SGD's momentum, which --optimizer {args.optimizer} does not use "
                     f"(Adam's own decay rates are -beta1 and -beta2): leave -mom out")
    given = [f"-{name}" for name in ADAM_BETAS if getattr(args, name) is not None and name not in
             OWN_OPTIONS[args.optimizer]]
    if given:
        parser.error(f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} Adam's, which --optimizer "
                     f"{args.optimizer} does not use: leave {'them' if len(given) > 1 else 'it'} out")


def parse_args(argv=None, method="ALP"):
    """The checked arguments, with the data set's defaults for the flags left out."""
    return parse_command_line(argv, method=method)[0]


def as_flags(family, dests, method="ALP"):
    """The family's defaults of `dests` (hyp.METHOD_DEFAULTS) written as the flags that give them."""
    flags = {action.dest: action.option_strings[-1] for action in build_parser(method=method)._actions
             if action.option_strings}
    return " ".join(f"{flags[dest]} {METHOD_DEFAULTS[method][family][dest]}" for dest in dests)


# Before the defaults depended on the data set, every data set got CIFAR's: a run of MNIST-type data started
# then without these flags holds CIFAR's values in its folder name and args.json.
FORMER_DEFAULTS = "cifar"


def refuse_a_run_of_the_former_defaults(arguments, filled, path):
    """--resume finds no run at `path`, but the run these arguments (a dict) named under the former defaults:
    one line with the flags that resume it (the run's own values, given explicitly). CLP and LSQ runs came
    after the change: none had the former defaults."""
    if arguments.get("method", "ALP") != "ALP" or os.path.isfile(os.path.join(path, "last.pt")):
        return
    former = typed_defaults(build_parser(), FORMER_DEFAULTS)
    optimizer = former["optimizer"] if "optimizer" in filled else arguments["optimizer"]
    changed = [dest for dest in filled if former[dest] != arguments[dest] and dest not in unread_options(optimizer)]
    former_path = os.path.join(arguments["out"], run_name({**arguments, **{dest: former[dest] for dest in changed}}))
    if not changed or not os.path.isfile(os.path.join(former_path, "last.pt")):
        return
    fail(f"--resume: no run at {path}, but {former_path} was started when {arguments['dataset']}'s defaults were "
         f"CIFAR's; resume it with those values given: add {as_flags(FORMER_DEFAULTS, changed)}")
