"""Robust accuracy of a checkpoint: the data set's attack suite, transfer attacks, ε sweeps, corruptions.

    python eval.py runs/<run>/best_robust.pt [--norms linf l2] [--attacks fgsm pgd-50] [--images 1000]
    python eval.py TARGET.pt --transfer-from SOURCE.pt        # made on SOURCE, measured on TARGET
    python eval.py CKPT --sweep linf 0:16/255:9               # accuracy vs ε, also drawn as a PNG
    python eval.py CKPT --corruptions CIFAR-10-C/             # accuracy per corruption and severity
    torchrun --standalone --nproc_per_node=4 eval.py CKPT     # the work shared out over 4 processes

Model, data set and training arguments come from the checkpoint (a bare state_dict such as a reference
paras.pt needs --model and --dataset). Tables go to stdout, every figure to a JSON file, and warnings and
progress bars to stderr. Finished units of work are kept beside the JSON until the evaluation completes:
killed, the same command continues where it stopped. The engine is the evaluation package; its evaluate()
takes any model.
"""
from interrupts import stop_in_one_line

if __name__ == "__main__":
    stop_in_one_line()  # first: a Ctrl-C while torch imports ends in one line too

import argparse
import os
import re
import sys

import torch
import torch.distributed as dist

from checkpoints import CheckpointError
from data import DATASETS, DataError, data_digest, load_split, train_val_splits
from attacks.common import NORMS
from evaluation import (AA_VERSIONS, Runner, ThreatModelViolation, UnitStore, attack_names, check_report,
                        check_sweep_epsilons, default_batch_size, evaluate, evaluate_corruptions, evaluate_sweep,
                        evaluate_transfer, evaluation_identity, format_checks, format_corruptions, format_details,
                        format_legend, format_sweep, format_table, format_transfer_table, open_units, parse_epsilon,
                        plan_summary, plan_sweep, plan_threat_models, plot_sweep, recorded_batch_size, remove,
                        shared, suite_summary, units_folder, write_json)
from models import MODELS
from training import setup_process
from interrupts import Interrupted, interruptible
from utils import CLIParser, default_device, describe_os_error, duration, fail, parse_number, progress_wanted
from weights import model_from_file


# --- command line ------------------------------------------------------------------------------------------

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


def build_parser():
    parser = CLIParser(description=__doc__,
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
                        help="images per attack call (default: 16 on CPU, so that progress moves; on CUDA "
                             "from the free memory, 50 to 1000)")
    parser.add_argument("--data-root", help="where the test split is (default: the checkpoint's training "
                                            "data root if that folder exists, else ./data)")
    parser.add_argument("--json", help="where to write every figure (default: beside the checkpoint, named "
                                       "after what is evaluated: <checkpoint>.eval[.<selection>].json)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite a JSON file that holds a different evaluation")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar per attack, moving per batch, with its rate, time left and running "
                             "robust accuracy (default: on when stderr is a terminal)")
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


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.progress = progress_wanted(args.progress)
    return args


# --- checkpoints, data, output file ------------------------------------------------------------------------

def resolve_device(name):
    try:
        device = torch.device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        fail(f"--device {name} cannot be used ({str(e).splitlines()[0]})")
    return device


def load(path, model_name, dataset, device):
    """(model in eval mode on device, meta); bad checkpoints stop the script."""
    try:
        model, meta = model_from_file(path, model_name=model_name, dataset=dataset)
    except CheckpointError as e:
        fail(str(e))
    # NaN weights give NaN logits, whose argmax is class 0: better named here than blamed on an attack.
    not_finite = next((name for name, t in model.state_dict().items()
                       if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if not_finite:
        fail(f"{path}: the checkpoint's weights are not finite (the first such tensor is {not_finite})")
    model = model.to(device)
    if device.type == "cpu":
        # oneDNN's convolutions run faster in channels_last and gave the same figures as the contiguous
        # layout on an ALP-trained MNIST net; bf16 autocast, faster still, changed them, so attacks stay float32.
        model = model.to(memory_format=torch.channels_last)
    return model, meta


def choose_data_root(given, training_args):
    """--data-root if given; else the run's own data root where it exists on this machine; else ./data."""
    if given:
        return given
    stored = (training_args or {}).get("data_root")
    return stored if stored and os.path.isdir(stored) else "./data"


def requested_evaluation(args):
    """What was asked for: two runs asking the same may share a JSON file, different ones may not."""
    def absolute(path):
        return os.path.abspath(path) if path else None
    return {"checkpoint": absolute(args.checkpoint), "n": args.n, "norms": args.norms, "attacks": args.attacks,
            "epsilons": args.epsilon, "seed": args.seed, "worst_case_only": args.worst_case_only,
            "aa_version": args.aa_version, "transfer_from": absolute(args.transfer_from),
            "sweep": args.sweep, "corruptions": absolute(args.corruptions)}


def default_json_path(checkpoint, requested):
    """<checkpoint>.eval.json for the full default evaluation; otherwise the selection in the name, e.g.
    last.eval.n100_linf_fgsm+pgd-50.json, so that a small trial never replaces a full result."""
    parts = []
    if requested["n"]:
        parts.append(f"n{requested['n']}")
    for key in ("norms", "attacks"):
        if requested[key]:
            parts.append("+".join(requested[key]))
    if requested["epsilons"]:
        parts.append("eps" + "+".join(requested["epsilons"]))
    if requested["seed"]:
        parts.append(f"seed{requested['seed']}")
    if requested["worst_case_only"]:
        parts.append("worst-case-only")
    if requested["aa_version"] != "standard":
        parts.append(f"aa-{requested['aa_version']}")
    if requested["transfer_from"]:
        # with the source's folder (its run): two runs' best_robust.pt must not share a file
        folder, file = os.path.split(requested["transfer_from"])
        parts.append(f"from-{os.path.basename(folder)}-{os.path.splitext(file)[0]}")
    if requested["sweep"]:
        parts.append("sweep-" + "-".join(requested["sweep"]))
    if requested["corruptions"]:
        parts.append("corruptions-" + os.path.basename(requested["corruptions"].rstrip(os.sep)))
    tag = re.sub(r"[^A-Za-z0-9.+-]", "_", "_".join(parts))
    return f"{os.path.splitext(checkpoint)[0]}.eval{'.' + tag if tag else ''}.json"


def checked_report(json_path, requested, identity, force):
    """evaluation.check_report, its refusals as one line."""
    try:
        return check_report(json_path, requested, identity, force)
    except ValueError as e:
        fail(str(e))


# Rounds that end sooner than this get no estimate: the line would be read after the round was over.
ESTIMATE_FROM_SECONDS = 30


def estimate_printer():
    """on_estimate for the Runner: the time a round of attacks should still take, as measured on the
    first batch of each of its attacks."""
    def on_estimate(seconds):
        if seconds >= ESTIMATE_FROM_SECONDS:
            print(f"estimated: {duration(seconds)} more for this round of attacks (measured on the first batch of "
                  f"each)", flush=True)
    return on_estimate


def save(report, path):
    try:
        write_json(report, path)
    except OSError as e:
        fail(f"--json {path} cannot be written ({e.strerror or type(e).__name__})")


def warn(message):
    print(f"{os.path.basename(sys.argv[0])}: warning: {message}", file=sys.stderr)


# --- main --------------------------------------------------------------------------------------------------

def check_selection(args, family, rank):
    """Every flag checked against the others and the suite before any data is read (rank 0 says what
    --attacks runs where). Returns the sweep's [(label, epsilon)] (None without --sweep)."""
    if args.source_model and not args.transfer_from:
        fail("--source-model needs --transfer-from")
    if args.sweep and (args.norms or args.epsilon or args.worst_case_only):
        fail("--sweep takes its norm and epsilons itself and reports every attack: drop --norms, --epsilon "
             "and --worst-case-only")
    if args.corruptions and (args.norms or args.attacks or args.epsilon or args.worst_case_only):
        fail("--corruptions runs no attacks: drop --norms, --attacks, --epsilon and --worst-case-only")
    try:
        if args.sweep:
            plan_sweep(family, args.sweep[0], args.attacks, args.aa_version)
            return parse_sweep(args.sweep[1])
        if not args.corruptions:
            plan = plan_threat_models(family, args.norms, args.attacks, args.epsilon, args.aa_version,
                                      white_box_only=bool(args.transfer_from))
            if args.attacks and rank == 0:  # a name may run at several norms: say where each runs
                print(f"--attacks {' '.join(args.attacks)} runs {plan_summary(plan)}", flush=True)
    except ValueError as e:
        fail(str(e))
    return None


def load_source(args, dataset, device):
    source, meta = load(args.transfer_from, args.source_model, dataset if args.source_model else None, device)
    if meta["dataset"] != dataset:
        fail(f"--transfer-from {args.transfer_from} is for {meta['dataset']} but {args.checkpoint} is for "
             f"{dataset}: a transfer attack needs both models for the same data set")
    return source, {"checkpoint": args.transfer_from, "model": meta.get("model"), "epoch": meta.get("epoch")}


def run_corruptions(args, model, model_info, dataset, requested, identity, json_path):
    try:
        report = evaluate_corruptions(model, args.corruptions, dataset, args.n, batch_size=args.batch_size,
                                      progress=args.progress, model_info=model_info)
    except ValueError as e:
        fail(str(e))
    report["evaluation"].update(requested=requested, identity=identity)
    save(report, json_path)
    print(f"{args.checkpoint}: {model_info['model']} on {dataset}, "
          f"{report['corruptions']['images_per_severity']} images per severity from {args.corruptions}\n",
          format_corruptions(report["corruptions"]), f"\nAll figures: {json_path}", sep="\n")


def data_warnings(meta, data_root):
    """A warning when the data under data_root is not the data the checkpoint was trained and validated on
    (its meta's digest of both splits, recomputed as training loaded them): another copy of the data set,
    or a stand-in, may hold the checkpoint's training images in its test split. None for a checkpoint
    without a digest (a reference paras.pt)."""
    trained_on, training = meta.get("data_digest"), meta.get("args") or {}
    if not trained_on:
        return []
    try:
        train, val = train_val_splits(meta["dataset"], data_root, training.get("ratio") or 0.0,
                                      training.get("subset"), training.get("seed", 0))
    except DataError as e:
        return [f"cannot check that {data_root} holds the data the checkpoint was trained on ({e})"]
    if data_digest(*train, *val) == trained_on:
        return []
    return [f"the {meta['dataset']} data under {data_root} is not the data the checkpoint was trained and "
            f"validated on (its digest differs): its test images may include the checkpoint's training images"]


def load_test_images(args, meta):
    """(images, labels, data root, warnings): the first --n test images of the checkpoint's data set."""
    data_root = choose_data_root(args.data_root, meta.get("args"))
    try:
        images, labels = load_split(meta["dataset"], data_root, train=False)
    except DataError as e:
        fail(str(e))
    warnings = data_warnings(meta, data_root)
    if args.n and args.n > len(labels):
        warnings.append(f"--n {args.n} exceeds the {len(labels)} test images of {meta['dataset']}; evaluating "
                        f"all {len(labels)}")
    return images[:args.n], labels[:args.n], data_root, warnings


def print_table(table, report):
    table_format = format_transfer_table if report["transfer"] else format_table
    print(table_format(table, report), "", format_details(table, report["evaluation"]["worst_case_only"]), "",
          sep="\n", flush=True)


def print_finished(report, json_path):
    """A finished evaluation is not run again: its tables, from its JSON."""
    print(f"{json_path} holds this evaluation, complete (--force runs it again)\n")
    if report["threat_models"] or report["transfer"]:
        print(format_legend(report), "", sep="\n")
    for table in report["threat_models"] + ((report["transfer"] or {}).get("threat_models") or []):
        print_table(table, report)
    if report["sweep"]:
        print(format_sweep(report["sweep"]), "", sep="\n")
    if report["corruptions"]:
        print(format_corruptions(report["corruptions"]), "", sep="\n")
    print(format_checks(report["masking_checks"]), f"\nAll figures: {json_path}", sep="\n")


def reporter(args, device, json_path, evaluation_record, warnings):
    """on_progress for the engine: prints what runs and each table as it finishes, and rewrites the JSON
    after every step (at once, so that a stale report of an earlier run never survives a crash)."""
    def on_progress(report, kind, record):
        if kind == "clean":
            report["evaluation"].update(evaluation_record)
            report["warnings"] = warnings + report["warnings"]
            for line in report["warnings"]:
                warn(line)
            print(f"{args.checkpoint}: {report['model']} on {report['dataset']}, epoch {report['epoch'] or '?'}; "
                  f"{report['evaluation']['n']} test images on {device}; clean accuracy "
                  f"{100 * report['clean']['accuracy']:.2f}%", flush=True)
            if report["transfer"]:
                source = report["transfer"]["source"]
                print(f"transfer attacks: made on {args.transfer_from} ({source['model']}, clean accuracy "
                      f"{100 * source['clean_accuracy']:.2f}%), measured on {args.checkpoint}", flush=True)
            elif report["aa_version"] != "standard":
                print(f"AutoAttack: pyautoattack's {report['aa_version']} version", flush=True)
            if not report["sweep"]:
                print(format_legend(report), flush=True)
            print(flush=True)
        elif kind == "table":
            print_table(record, report)
        save(report, json_path)
    return on_progress


def stopped(stop, how_to_continue):
    """Ctrl-C or SIGTERM (interrupts.Interrupted): one line (none where how_to_continue is None: another process
    says it), and the exit status of a process ended by that signal."""
    if how_to_continue is not None:
        print(f"{os.path.basename(sys.argv[0])}: stopped by {stop}; {how_to_continue}", file=sys.stderr)
    sys.exit(stop.exit_status)


def main(argv=None):
    args = parse_args(argv)
    try:
        with interruptible():
            evaluate_checkpoint(args)
    except Interrupted as stop:  # outside the attacks, which say more
        stopped(stop, "run the same command to continue")


def corruption_files(folder):
    """[(file name, size)] of a corruption folder: what its report is recognised by ([] if unreadable)."""
    try:
        return sorted((name, os.path.getsize(os.path.join(folder, name)))
                      for name in os.listdir(folder) if name.endswith(".npy"))
    except OSError:
        return []


def evaluate_checkpoint(args):
    # Under torchrun: one process per GPU (gloo on CPU); rank 0 alone prints and writes.
    rank, world_size, device = setup_process(resolve_device(args.device or default_device()))
    lead = rank == 0
    model, meta = load(args.checkpoint, args.model, args.dataset, device)
    dataset = meta["dataset"]
    sweep_epsilons = check_selection(args, DATASETS[dataset].family, rank)
    source, source_info = load_source(args, dataset, device) if args.transfer_from else (None, None)
    requested = requested_evaluation(args)
    json_path = args.json or default_json_path(args.checkpoint, requested)
    model_info = {"checkpoint": args.checkpoint, "model": meta.get("model"), "epoch": meta.get("epoch"),
                  "args": meta.get("args")}
    if args.corruptions:
        identity = evaluation_identity(model, meta["model"], dataset, device,
                                       corruption_files=corruption_files(args.corruptions))
        finished = checked_report(json_path, requested, identity, args.force)
        if finished:
            return print_finished(finished, json_path) if lead else None
        return run_corruptions(args, model, model_info, dataset, requested, identity, json_path) if lead else None

    images, labels, data_root, warnings = load_test_images(args, meta)
    batch_size = shared(args.batch_size or recorded_batch_size(json_path, device)
                        or default_batch_size(device, model, images, world_size), world_size)
    identity = evaluation_identity(model, meta["model"], dataset, device, images=images, labels=labels,
                                   batch_size=batch_size, source=source, source_name=(source_info or {}).get("model"))
    finished = checked_report(json_path, requested, identity, args.force)
    if finished:
        return print_finished(finished, json_path) if lead else None

    units = units_folder(json_path)
    if lead:
        try:
            store, notes = open_units(units, identity, args.force)
        except OSError as e:
            fail(f"cannot keep the finished units of work in {units} ({e.strerror or type(e).__name__})")
        for line in notes:
            warn(line)
        if store.outcomes:
            print(f"continuing: {len(store.outcomes)} finished units of work in {units}", flush=True)
    shared(None, world_size)  # the other processes read the folder once rank 0 has set it up
    if not lead:
        store = UnitStore(units)
    runner = Runner(store, rank, world_size, progress=args.progress, on_estimate=estimate_printer() if lead else None)
    common = {"seed": args.seed, "batch_size": batch_size, "runner": runner, "on_progress": None}
    if lead:
        common["on_progress"] = reporter(args, device, json_path, {"data_root": data_root, "requested": requested,
                                                                   "identity": identity}, warnings)
    try:
        if args.transfer_from:
            report = evaluate_transfer(source, model, images, labels, dataset, args.norms, args.attacks,
                                       args.epsilon, worst_case_only=args.worst_case_only,
                                       source_info=source_info, target_info=model_info, **common)
        elif args.sweep:
            report = evaluate_sweep(model, images, labels, dataset, args.sweep[0], sweep_epsilons, args.attacks,
                                    aa_version=args.aa_version, model_info=model_info, **common)
        else:
            report = evaluate(model, images, labels, dataset, args.norms, args.attacks, args.epsilon,
                              aa_version=args.aa_version, worst_case_only=args.worst_case_only,
                              model_info=model_info, **common)
    except (KeyboardInterrupt, Interrupted) as stop:
        stop = stop if isinstance(stop, Interrupted) else Interrupted("Ctrl-C")
        stopped(stop, f"{store.kept()} finished units of work are kept in {units}: run the same command"
                      f"{' without --force' if args.force else ''} to continue" if lead else None)
    except ThreatModelViolation as e:
        fail(f"attack bug, evaluation stopped: {e}", status=1)
    except OSError as e:  # a unit that cannot be written: a full disk, a folder made read-only
        fail(f"{describe_os_error(e)}; the {store.kept()} finished units of work are kept in {units}: "
             f"run the same command to continue once it can be written")
    except ValueError as e:
        fail(str(e))
    if world_size > 1:
        dist.destroy_process_group()
    if not lead:
        return
    if report["sweep"]:
        plot_path = os.path.splitext(json_path)[0] + ".png"
        try:
            plot_sweep(report, plot_path)
        except OSError as e:
            fail(f"{plot_path} cannot be written ({e.strerror or type(e).__name__})")
        report["sweep"]["plot"] = plot_path
        print(format_sweep(report["sweep"]), f"\nPlot: {plot_path}\n", sep="\n")
    save(report, json_path)
    remove(units)  # the JSON holds every figure now
    print(format_checks(report["masking_checks"]), f"\nAll figures: {json_path}", sep="\n")


if __name__ == "__main__":
    main()
