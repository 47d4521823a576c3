"""Adversarial Logit Pairing (Kannan, Kurakin & Goodfellow, 2018).

Train on each clean batch and its PGD adversarial twin, and pull the two sets of logits together:

    loss = CE(f(x), y) + CE(f(x_adv), y) + leverage * MSE(f(x_adv), f(x))

One process:  python ALP.py resnet32 cifar10 -lp=AT --epochs=200 -wd=0.0002 --leverage=0.5
K processes:  torchrun --nproc_per_node=K ALP.py resnet32 cifar10 ...   (one per GPU; gloo on CPU)
"""
from interrupts import stop_in_one_line

if __name__ == "__main__":
    stop_in_one_line()  # first: a Ctrl-C while torch imports ends in one line too

import argparse
import functools
import math
import os
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from attacks import ATTACKS
from checkpoints import checkpoint_meta
from cuda_graph import GraphedStep, cuda_graph_refusal
from data import DATASETS, DataError, DeviceLoader, data_digest, train_val_splits
from models import MODELS
from optimization import LEARNING_POLICIES, OPTIMIZERS
from runs import RunFolder, get_rng_state, in_force, run_name
from training import (HYP, TRAINING_ATTACKS, TRAINING_DEFAULTS, BatchClock, EpochTally, barely_learnt, barrier,
                      estimate_line, gather_over_processes, mixed_precision, setup_process, speed_options,
                      stop_unless_finite, train_step, validate, validation_batch_size, validation_seconds)
from interrupts import Interrupted, interruptible
from utils import CLIParser, default_device, fail, number, progress_wanted
from weights import build_model


def data_sets_of(family):
    return ", ".join(name for name, spec in DATASETS.items() if spec.family == family)


DATA_SET_DEFAULTS_NOTE = (
    f"Defaults that depend on the data set are the reference implementation's settings: its CIFAR command for "
    f"{data_sets_of('cifar')}, its MNIST command for {data_sets_of('mnist')} (the table, with its source: "
    f"TRAINING_DEFAULTS in training.py). A flag given on the command line wins; args.json records the values "
    f"that ran.")


def data_set_default(dest):
    """The help text's default of a flag whose default depends on the data set (training.TRAINING_DEFAULTS)."""
    by_value = {}
    for family, defaults in TRAINING_DEFAULTS.items():
        by_value.setdefault(str(defaults[dest]), []).append(data_sets_of(family))
    if len(by_value) == 1:
        return f"(default: {next(iter(by_value))})"
    return "(default: " + "; ".join(f"{value} for {', '.join(names)}" for value, names in by_value.items()) + ")"


def build_parser():
    p = CLIParser(description=__doc__, epilog=DATA_SET_DEFAULTS_NOTE)

    def add(*flags, help, **kwargs):  # a flag whose default comes from the data set's row of the table
        action = p.add_argument(*flags, default=None, help=help, **kwargs)
        action.help = f"{help} {data_set_default(action.dest)}"

    p.add_argument("model", metavar="MODEL", choices=MODELS, help="network: " + ", ".join(MODELS))
    p.add_argument("dataset", metavar="DATASET", choices=DATASETS, help="data set: " + ", ".join(DATASETS))
    add("--leverage", type=float, help="weight of the logit-pairing term (0: plain AT on clean + adversarial "
        "halves)")
    p.add_argument("--attack", choices=TRAINING_ATTACKS, default="pgd-linf", help="attack that makes the pairs")
    add("--epsilon", type=number, help="radius of the attack's ball (number or fraction)")
    add("--stepsize", type=number, help="absolute PGD step size")
    add("--steps", type=int, help="PGD steps")
    add("--optimizer", choices=OPTIMIZERS, help="optimiser")
    add("-mom", "--momentum", type=float, help="SGD's momentum")
    p.add_argument("-beta1", type=float, default=0.9, help="Adam's beta1")
    p.add_argument("-beta2", type=float, default=0.999, help="Adam's beta2")
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
                   help="progress bars with rate and time left (default: on when stderr is a terminal)")
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
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")
    speed.add_argument("--cuda-graph", action="store_true",
                       help="experimental, not yet run on a GPU: replay each training iteration as one CUDA graph "
                            "(one process, no --compile; elsewhere the eager step runs, with a note)")
    return p


def typed_defaults(parser, family):
    """A family's row of training.TRAINING_DEFAULTS, each value parsed by its flag's own type."""
    actions = {action.dest: action for action in parser._actions}
    return {dest: actions[dest].type(value) if actions[dest].type else value
            for dest, value in TRAINING_DEFAULTS[family].items()}


def parse_command_line(argv=None):
    """(arguments, the flags whose values came from the data set's defaults): the command line checked, each
    flag left out given its data set's default (training.TRAINING_DEFAULTS)."""
    p = build_parser()
    args = p.parse_args(argv)
    defaults = typed_defaults(p, DATASETS[args.dataset].family)
    filled = [dest for dest in defaults if getattr(args, dest) is None]
    for dest in filled:
        setattr(args, dest, defaults[dest])
    for name in ("epsilon", "stepsize", "leverage", "lr", "momentum", "weight_decay", "beta1", "beta2", "ratio"):
        if not math.isfinite(getattr(args, name)):
            p.error(f"--{name.replace('_', '-')} must be a finite number, not {getattr(args, name)}")
    classes = DATASETS[args.dataset].num_classes
    checks = [
        (args.epsilon > 0, "--epsilon must be > 0"),
        (args.stepsize > 0, "--stepsize must be > 0"),
        (args.steps > 0, "--steps must be > 0"),
        (args.batch_size > 0, "--batch_size must be > 0"),
        (args.epochs > 0, "--epochs must be > 0"),
        (args.leverage >= 0, "--leverage must be >= 0"),
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
    if args.attack == "pgd-linf" and args.epsilon >= 1:
        print(f"warning: --epsilon {args.epsilon:g} lets ℓ∞ PGD reach any image in [0, 1] (written in 0-255 "
              f"units? 8/255 is 8 in those)", file=sys.stderr)
    if args.steps > 1000:
        print(f"warning: --steps {args.steps} makes every batch run {args.steps} forward and backward passes "
              f"before its step (the reference uses 10 for CIFAR, 40 for MNIST)", file=sys.stderr)
    args.progress = progress_wanted(args.progress)
    return args, filled


def parse_args(argv=None):
    """The checked arguments, with the data set's defaults for the flags left out."""
    return parse_command_line(argv)[0]


def as_flags(family, dests):
    """The family's defaults of `dests` (training.TRAINING_DEFAULTS) written as the flags that give them."""
    flags = {action.dest: action.option_strings[-1] for action in build_parser()._actions if action.option_strings}
    return " ".join(f"{flags[dest]} {TRAINING_DEFAULTS[family][dest]}" for dest in dests)


# Before the defaults depended on the data set, every data set got CIFAR's: a run of MNIST-type data started
# then without these flags holds CIFAR's values in its folder name and args.json.
FORMER_DEFAULTS = "cifar"


def refuse_a_run_of_the_former_defaults(args, filled, path):
    """--resume finds no run at `path`, but the run these arguments named under the former defaults: one line
    with the flags that resume it (the run's own values, given explicitly)."""
    if os.path.isfile(os.path.join(path, "last.pt")):
        return
    parser = build_parser()
    former = typed_defaults(parser, FORMER_DEFAULTS)
    changed = [dest for dest in filled if former[dest] != getattr(args, dest)]
    former_path = os.path.join(args.out, run_name({**vars(args), **{dest: former[dest] for dest in changed}}))
    if not changed or not os.path.isfile(os.path.join(former_path, "last.pt")):
        return
    fail(f"--resume: no run at {path}, but {former_path} was started when {args.dataset}'s defaults were "
         f"CIFAR's; resume it with those values given: add {as_flags(FORMER_DEFAULTS, changed)}")


def load_data(args, device, rank, world_size, channels_last):
    """(training loader, validation loader, digest of their data): each split one uint8 tensor on the device.
    Rank 0 downloads the data if needed; the others wait for it."""
    spec = DATASETS[args.dataset]
    if rank != 0:
        barrier()
    try:
        (train_x, train_y), (val_x, val_y) = train_val_splits(args.dataset, args.data_root, args.ratio,
                                                              args.subset, args.seed)
    except DataError as e:
        fail(str(e))
    if rank == 0:
        barrier()
    if args.subset and args.subset > len(train_y):
        fail(f"--subset {args.subset} is more than the {len(train_y)} training images there are")
    if args.subset and len(train_y) < world_size * args.batch_size:
        per = f" per process, {world_size} processes" if world_size > 1 else ""
        fail(f"--subset {args.subset} is fewer training images than one batch of {args.batch_size} (-b){per}: "
             f"raise --subset or lower -b")
    if len(train_y) < world_size * args.batch_size or len(val_y) == 0:
        fail(f"--ratio {args.ratio:g} leaves {len(train_y)} training and {len(val_y)} validation images: too few "
             f"for a batch of {args.batch_size} per process and a validation")
    digest = data_digest(train_x, train_y, val_x, val_y)
    train_loader = DeviceLoader(train_x, train_y, args.batch_size, device, shuffle=True, crop=spec.crop,
                                flip=spec.flip, seed=args.seed, rank=rank, world_size=world_size,
                                channels_last=channels_last)
    val_loader = DeviceLoader(val_x, val_y, validation_batch_size(device), device, channels_last=channels_last)
    return train_loader, val_loader, digest


def validates(epoch, epochs, eval_freq):
    """Whether epoch `epoch` (from 0) ends with a validation: every --eval-freq-th, and the last."""
    return (epoch + 1) % eval_freq == 0 or epoch + 1 == epochs


def barely_learnt_note(best, dataset):
    """The run's last line's warning when its best validation figures say it has barely learnt, or None."""
    if min(best["clean_accuracy"], best["robust_accuracy"]) < 0:  # no figures kept
        return None
    why = barely_learnt(best["clean_accuracy"], best["robust_accuracy"], dataset)
    return f"the model has barely learnt ({why}): more epochs or images (--subset) needed" if why else None


def main(argv=None):
    """Train as the command line says; returns the trained model (tests compare processes' weights), or
    None when --resume finds the run finished."""
    args, filled = parse_command_line(argv)
    rank, world_size, device = setup_process(args.device)
    args.amp, args.channels_last, args.cudnn_benchmark = speed_options(  # what holds here: args.json says
        device, args.amp, args.channels_last, args.cudnn_benchmark)
    graph_refusal = cuda_graph_refusal(device, world_size, args.compile) if args.cuda_graph else None
    args.cuda_graph = args.cuda_graph and graph_refusal is None
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    autocast = mixed_precision(device.type, args.amp)
    run = RunFolder(os.path.join(args.out, run_name(vars(args))), vars(args), is_main=rank == 0)
    if args.resume:
        refuse_a_run_of_the_former_defaults(args, filled, run.path)
    resumed = run.open(args.resume)  # before the data loads: a refusal costs nothing
    if resumed is not None and resumed["epoch"] >= args.epochs:
        run.release()
        print(f"{run.path} is finished: all {args.epochs} epochs are done, nothing to resume")
        return None

    train_loader, val_loader, data_id = load_data(args, device, rank, world_size, args.channels_last)
    spec = DATASETS[args.dataset]
    run.take(resumed, in_force(device, world_size, args.amp, args.channels_last, args.cudnn_benchmark,
                               args.compile, data_id), args.epochs)

    torch.manual_seed(args.seed + rank)  # distinct PGD starts and crops per process; DDP syncs the weights
    model = build_model(args.model, args.dataset).to(device)  # the network itself: what checkpoints hold
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    own_options = {"sgd": {"momentum": args.momentum}, "adam": {"betas": (args.beta1, args.beta2)}}
    optimizer = OPTIMIZERS[args.optimizer](model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                           fused=args.cuda_graph, **own_options[args.optimizer])
    scheduler = LEARNING_POLICIES[args.learning_policy](optimizer, args.epochs)
    start_epoch = run.restore(resumed, rank, model, optimizer, scheduler) if resumed else 0

    net = torch.compile(model) if args.compile else model  # what the attacks, the loss and validation call
    ddp_net = DistributedDataParallel(net) if world_size > 1 else net  # its backward averages the gradients
    attack = ATTACKS[args.attack](args.epsilon, steps=args.steps, stepsize=args.stepsize)
    validation_attack = ATTACKS["pgd-linf"](**HYP["validation_attack"][spec.family])
    if args.cuda_graph:  # the same iteration, recorded once and replayed
        step = GraphedStep(ddp_net, net, attack, optimizer, args.leverage, autocast, args.batch_size,
                          log=run.log)
    else:  # the PGD pair, the ALP loss (training.alp_loss), the optimiser step
        step = functools.partial(train_step, ddp_net, net, attack, optimizer, leverage=args.leverage,
                                 autocast=autocast)
    if graph_refusal:
        run.log(f"--cuda-graph: {graph_refusal}; the eager step runs instead")
    run.log(f"{'resuming' if resumed else 'starting'} {run.path} at epoch {start_epoch + 1}/{args.epochs} on "
            f"{world_size} x {device} (training in {'bf16 autocast' if args.amp else 'float32'}, validation in "
            f"float32); {len(train_loader.labels)} training, {len(val_loader.labels)} validation images")
    if filled:
        run.log(f"{args.dataset}'s defaults: {as_flags(spec.family, filled)} (the reference's settings, "
                f"training.TRAINING_DEFAULTS)")

    meta = checkpoint_meta(args.model, args.dataset, vars(args), data_digest=data_id)
    progress = args.progress and run.is_main
    epoch = start_epoch
    validations = sum(validates(e, args.epochs, args.eval_freq) for e in range(start_epoch, args.epochs))
    try:
        with interruptible():
            validation_cost = (validation_seconds(net, val_loader, validation_attack, spec.num_classes)
                               if run.is_main else None)
            clock = BatchClock(device, untimed=GraphedStep.UNTIMED if args.cuda_graph else 1)
            for epoch in range(start_epoch, args.epochs):
                started, lr = time.time(), optimizer.param_groups[0]["lr"]
                tally = EpochTally(device)
                batches = len(train_loader)
                for batch, (x, y) in enumerate(tqdm(train_loader.epoch(epoch), total=batches, disable=not progress,
                                                    desc=f"epoch {epoch + 1}", leave=False)):
                    loss, logits_adv = step(x, y)  # the PGD pair, the ALP loss, the optimiser step
                    tally.add(loss, logits_adv, y)
                    per_batch = clock.tick(last=batch + 1 == batches)
                    if per_batch is not None and validation_cost is not None:
                        run.log(estimate_line(per_batch * batches, clock.timed, *validation_cost,
                                              args.epochs - start_epoch, validations, resumed is not None))
                scheduler.step()
                train_loss, train_adv_accuracy, first_bad_batch = tally.result()
                stop_unless_finite(first_bad_batch, model, epoch, run.kept())
                row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss,
                       "train_adv_accuracy": train_adv_accuracy, "clean_accuracy": None, "robust_accuracy": None,
                       "validation_seconds": None, "seconds": None}
                counts = None  # of the classes the model gives the validation images
                if run.is_main and validates(epoch, args.epochs, args.eval_freq):
                    validation_started = time.time()
                    row["clean_accuracy"], row["robust_accuracy"], counts = validate(
                        net, val_loader, validation_attack, spec.num_classes, progress,
                        f"validating epoch {epoch + 1}")
                    row["validation_seconds"] = round(time.time() - validation_started, 2)
                row["seconds"] = round(time.time() - started, 2)
                run.save_epoch(model, optimizer, scheduler, meta, row, gather_over_processes(get_rng_state()),
                               args.epochs, HYP["snapshot_every"], class_counts=counts)
    except Interrupted as stop:
        run.log(f"stopped by {stop} in epoch {epoch + 1}; {run.how_to_continue()}")
        run.release()
        sys.exit(stop.exit_status)
    run.finish(title=run_name(vars(args)), note=barely_learnt_note(run.best, args.dataset))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return model


if __name__ == "__main__":
    main()
