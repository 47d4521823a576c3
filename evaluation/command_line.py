"""eval.py's command line: its options and their types, the flags that exclude one another (refused before
any checkpoint is read), and what was asked for, as eval.py records it in the JSON."""
import argparse
import os

from attacks.common import NORMS
from data import DATASETS
from models import MODELS
from utils import CLIParser, fail, parse_number, progress_wanted

from .suite import AA_VERSIONS, attack_names, check_sweep_epsilons, parse_epsilon, suite_summary


def epsilon_argument(text):
    try:
        parse_epsilon(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number (finite) or fraction such as 8/255, "
                                         f"not {text!r}")
    return text.strip()


def parse_sweep(text):
    """[(label, epsilon)] from "START:STOP:COUNT" (COUNT evenly spaced values, ends included) or a comma
    list "0,4/255,8/255". Raises ValueError for anything else (see check_sweep_epsilons)."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"sweep {text!r}: write START:STOP:COUNT, e.g. 0:16/255:9")
        start, stop = parse_number(parts[0]), parse_number(parts[1])
        try:
            count = int(parts[2])
        except ValueError:
            raise ValueError(f"sweep {text!r}: COUNT must be an integer, not {parts[2]!r}") from None
        if count < 2:
            raise ValueError(f"sweep {text!r}: COUNT must be at least 2")
        values = [start + (stop - start) * i / (count - 1) for i in range(count)]
        _, _, denominator = parts[1].partition("/")  # 0:16/255:9 -> labels 0/255, 2/255, ... 16/255
        labels = ([f"{v * float(denominator):.4g}/{denominator}" for v in values] if denominator
                  else [f"{v:.4g}" for v in values])
    else:
        labels = [part.strip() for part in text.split(",") if part.strip()]
        values = [parse_number(label) for label in labels]
    check_sweep_epsilons(values, text)
    return list(zip(labels, values))


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def build_parser(description=None):
    parser = CLIParser(description=description,
                       epilog="The suite, per data-set family (--attacks names):\n" + suite_summary())
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .pt file written by ALP.py, or a bare "
                                                                  "state_dict with --model and --dataset")
    parser.add_argument("--model", choices=MODELS, help="the network of a bare state_dict")
    parser.add_argument("--dataset", choices=DATASETS, help="the data set of a bare state_dict")
    parser.add_argument("--norms", nargs="+", choices=NORMS, help="threat models to run (default: all)")
    parser.add_argument("--attacks", nargs="+", choices=attack_names(), metavar="NAME",
                        help="attacks to run (default: all of the suite; for --sweep, its PGDs); "
                             "see the suite below")
    parser.add_argument("--epsilon", nargs="+", type=epsilon_argument,
                        help="epsilons for every selected norm instead of the suite's (e.g. 8/255 0.1)")
    # --images, not --n alone: torchrun's argparse reads every --x token, the script's own included, as a
    # possible prefix of its options, and refuses --n (--nnodes? --nproc-per-node?). --n works in one process.
    parser.add_argument("--images", "--n", dest="n", metavar="N", type=positive_int,
                        help="evaluate the first N test images (default: all); with --corruptions, N per "
                             "severity")
    parser.add_argument("-b", "--batch-size", type=positive_int,
                        help="images per attack call (default: 16 on CPU, so that progress moves; on CUDA as many "
                             "as the free memory holds at the model's measured peak per image, up to each "
                             "process's share of the images)")
    parser.add_argument("--data-root", help="where the test split is (default: the checkpoint's training "
                                            "data root if that folder exists, else ./data)")
    parser.add_argument("--json", help="where to write every figure (default: beside the checkpoint, named "
                                       "after what is evaluated: <checkpoint>.eval[.<selection>].json)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite a JSON file that holds a different evaluation")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar per attack, moving per batch, with its rate, time left and running "
                             "robust accuracy (default: on when stderr is a terminal; without them, a progress "
                             "line at least every minute)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if present, else cpu)")
    parser.add_argument("--worst-case-only", action="store_true",
                        help="attack only the samples that earlier attacks of the table left robust; "
                             "report only the worst case")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds every attack's own random stream, with its norm, epsilon and name")
    parser.add_argument("--aa-version", choices=AA_VERSIONS, default="standard",
                        help="pyautoattack's version (rand: for randomised defences)")
    modes = parser.add_argument_group("other evaluations (one at a time, instead of the suite)")
    exclusive = modes.add_mutually_exclusive_group()
    exclusive.add_argument("--transfer-from", metavar="SOURCE",
                           help="make the adversarial examples on this checkpoint (same data set) with the "
                                "suite's white-box attacks, and measure them on CHECKPOINT")
    exclusive.add_argument("--sweep", nargs=2, metavar=("NORM", "EPSILONS"),
                           help="robust accuracy at each epsilon: START:STOP:COUNT (e.g. 0:16/255:9) or a "
                                "comma list (0,0.1,0.2); written to the JSON and drawn as <json>.png")
    exclusive.add_argument("--corruptions", metavar="DIR",
                           help="accuracy on CIFAR-10-C / CIFAR-100-C as published (<corruption>.npy and "
                                "labels.npy)")
    modes.add_argument("--source-model", choices=MODELS,
                       help="the network of a bare state_dict given to --transfer-from")
    return parser


def parse_args(argv=None, description=None):
    """The options, with the flags that exclude one another refused in one line. With --sweep, its epsilons
    parsed into args.sweep_epsilons ([(label, epsilon)]; None without --sweep)."""
    args = build_parser(description).parse_args(argv)
    args.progress = progress_wanted(args.progress)
    if args.source_model and not args.transfer_from:
        fail("--source-model needs --transfer-from")
    if args.transfer_from and args.aa_version != "standard":
        fail("--aa-version picks AutoAttack's version, and a transfer evaluation runs no AutoAttack: drop it")
    if args.sweep and (args.norms or args.epsilon or args.worst_case_only):
        fail("--sweep takes its norm and epsilons itself and reports every attack: drop --norms, --epsilon "
             "and --worst-case-only")
    attack_options = {"--norms": args.norms, "--attacks": args.attacks, "--epsilon": args.epsilon,
                      "--worst-case-only": args.worst_case_only, "--seed": args.seed != 0,
                      "--aa-version": args.aa_version != "standard"}
    if args.corruptions and any(attack_options.values()):
        given = [flag for flag, present in attack_options.items() if present]
        fail(f"--corruptions runs no attacks: drop {' and '.join(given)}")
    args.sweep_epsilons = None
    if args.sweep:
        try:
            args.sweep_epsilons = parse_sweep(args.sweep[1])
        except ValueError as e:
            fail(str(e))
    return args


def requested_evaluation(args):
    """What was asked for: two runs asking the same may share a JSON file, different ones may not."""
    def absolute(path):
        return os.path.abspath(path) if path else None
    return {"checkpoint": absolute(args.checkpoint), "n": args.n, "norms": args.norms, "attacks": args.attacks,
            "epsilons": args.epsilon, "seed": args.seed, "worst_case_only": args.worst_case_only,
            "aa_version": args.aa_version, "transfer_from": absolute(args.transfer_from),
            "sweep": args.sweep, "corruptions": absolute(args.corruptions)}
