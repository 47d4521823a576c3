"""The training loop that ALP.py, CLP.py and LSQ.py share: the command line, the run folder and --resume, the
epochs, validation, checkpoints, the time estimate, torchrun and the CUDA graph. What a script brings is its
method's name (its flags and defaults: training/flags.py, training/hyp.py) and its training iteration:

    make_iteration(args, optimizer, autocast) -> iteration(train_model, attack_model, x, y) -> (loss, logits)

One optimiser step on the batch (x, y), whose loss and the logits of the images it trained on (adversarial for
ALP, noise-augmented for CLP and LSQ: the tally's training accuracy) come back detached. `train_model` may be
wrapped in DistributedDataParallel; `attack_model` is the bare network, for an attack's passes, which need no
gradient synchronisation. cuda_graph.GraphedStep records the same iteration once and replays it.
"""
import functools
import os
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from checkpoints import checkpoint_meta
from cuda_graph import GraphedStep, cuda_graph_refusal
from data import DATASETS
from interrupts import Interrupted, interruptible
from optimization import LEARNING_POLICIES, OPTIMIZERS, own_options
from utils import with_progress
from weights import build_model

from .clock import BatchClock, estimate_line
from .epoch import EpochTally, stop_unless_finite
from .flags import as_flags, parse_command_line, refuse_a_run_of_the_former_defaults
from .hyp import HYP
from .loading import load_data
from .processes import end_processes, gather_over_processes, setup_process
from .records import get_rng_state, in_force, run_name
from .run_folder import RunFolder
from .speed import CPU_COMPILE_NOTE, compiled_network, mixed_precision, speed_options
from .validation import barely_learnt_note, validate, validates, validation_attack, validation_seconds


def main(argv, method, description, make_iteration):
    """Train as the command line of `method`'s script says; returns the trained model (tests compare processes'
    weights), or None when --resume finds the run finished."""
    args, filled = parse_command_line(argv, description=description, method=method)
    rank, world_size, device = setup_process(args.device)
    args.amp, args.channels_last, args.cudnn_benchmark = speed_options(  # what holds here: args.json says
        device, args.amp, args.channels_last, args.cudnn_benchmark)
    graph_refusal = cuda_graph_refusal(device, world_size, args.compile)
    asked_for_graph = args.cuda_graph  # None: on where it can run, without a word where it cannot
    args.cuda_graph = args.cuda_graph is not False and graph_refusal is None
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    run = RunFolder(os.path.join(args.out, run_name(vars(args))), vars(args), is_main=rank == 0)
    try:  # whatever ends the run, a refusal included, lets its folder go: this process may resume it
        if args.resume:
            refuse_a_run_of_the_former_defaults(vars(args), filled, run.path)
        resumed = run.open(args.resume)  # before the data loads: a refusal costs nothing
        if resumed is not None and resumed["epoch"] >= args.epochs:
            print(f"{run.path} is finished: all {args.epochs} epochs are done, nothing to resume")
            return None
        model = train(args, filled, run, resumed, rank, world_size, device, make_iteration,
                      f"--cuda-graph: {graph_refusal}; the eager step runs instead"
                      if asked_for_graph and graph_refusal else None)
    finally:
        run.release()
    end_processes()
    return model


def train(args, filled, run, resumed, rank, world_size, device, make_iteration, graph_note):
    """The run itself, in the folder `run` that main() opened: returns the trained model."""
    spec = DATASETS[args.dataset]
    train_loader, val_loader, data_id = load_data(args.dataset, args.data_root, args.ratio, args.subset,
                                                  args.seed, args.batch_size, device, rank, world_size,
                                                  args.channels_last)
    run.take(resumed, in_force(device, world_size, args.amp, args.channels_last, args.cudnn_benchmark,
                               args.compile, args.cuda_graph, data_id), args.epochs)

    torch.manual_seed(args.seed + rank)  # distinct PGD starts, noise and crops per process; DDP syncs the weights
    model = build_model(args.model, args.dataset).to(device)  # the network itself: what checkpoints hold
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = OPTIMIZERS[args.optimizer](model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                           fused=args.cuda_graph,
                                           **own_options(args.optimizer, args.momentum, args.beta1, args.beta2))
    scheduler = LEARNING_POLICIES[args.learning_policy](optimizer, args.epochs)
    start_epoch = run.restore(resumed, rank, model, optimizer, scheduler) if resumed else 0

    net = compiled_network(model) if args.compile else model  # what the training step's attack and loss call
    ddp_net = DistributedDataParallel(net) if world_size > 1 else net  # its backward averages the gradients
    autocast = mixed_precision(device.type, args.amp)
    iteration = make_iteration(args, optimizer, autocast)  # the script's own loss and step
    if args.cuda_graph:  # the same iteration, recorded once as a CUDA graph and replayed
        step = GraphedStep(iteration, ddp_net, net, optimizer, autocast, args.batch_size, log=run.log)
    else:
        step = functools.partial(iteration, ddp_net, net)
    if graph_note:
        run.log(graph_note)
    if args.compile and device.type == "cpu":
        run.log(CPU_COMPILE_NOTE)
    run.log(f"{'resuming' if resumed else 'starting'} {run.path} at epoch {start_epoch + 1}/{args.epochs} on "
            f"{world_size} x {device} (training in {'bf16 autocast' if args.amp else 'float32'}"
            f"{', one CUDA graph per iteration' if args.cuda_graph else ''}, validation in float32); "
            f"{len(train_loader.labels)} training, {len(val_loader.labels)} validation images")
    if filled:
        run.log(f"{args.dataset}'s defaults: {as_flags(spec.family, filled, args.method)} (training/hyp.py's "
                f"METHOD_DEFAULTS[{args.method!r}], with its source)")

    validator = validation_attack(spec.family)
    meta = checkpoint_meta(args.model, args.dataset, vars(args), data_digest=data_id)
    progress = args.progress and run.is_main
    validations = sum(validates(e, args.epochs, args.eval_freq) for e in range(start_epoch, args.epochs))
    epoch = start_epoch
    try:
        with interruptible():
            validation_cost = (validation_seconds(model, val_loader, validator, spec.num_classes)
                               if run.is_main else None)
            clock = BatchClock(device, untimed=GraphedStep.UNTIMED if args.cuda_graph else 1)
            for epoch in range(start_epoch, args.epochs):
                started, lr = time.time(), optimizer.param_groups[0]["lr"]
                tally = EpochTally(device)
                batches = len(train_loader)
                for batch, (x, y) in enumerate(with_progress(train_loader.epoch(epoch), batches, f"epoch {epoch + 1}",
                                                             progress, unit="batch")):
                    loss, logits = step(x, y)  # the script's iteration: its loss, its optimiser step
                    tally.add(loss, logits, y)
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
                        model, val_loader, validator, spec.num_classes, progress, f"validating epoch {epoch + 1}")
                    row["validation_seconds"] = round(time.time() - validation_started, 2)
                row["seconds"] = round(time.time() - started, 2)
                run.save_epoch(model, optimizer, scheduler, meta, row, gather_over_processes(get_rng_state()),
                               args.epochs, HYP["snapshot_every"], class_counts=counts)
    except Interrupted as stop:
        run.log(f"stopped by {stop} in epoch {epoch + 1}; {run.how_to_continue()}")
        sys.exit(stop.exit_status)  # main() lets the run folder go on the way out
    run.finish(title=run_name(vars(args)), note=barely_learnt_note(run.best, args.dataset))
    return model
