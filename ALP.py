"""Adversarial Logit Pairing (Kannan, Kurakin & Goodfellow, 2018).

Train on each clean batch and its PGD adversarial twin, and pull the two sets of logits together:

    loss = CE(f(x), y) + CE(f(x_adv), y) + leverage * MSE(f(x_adv), f(x))

One process:  python ALP.py resnet32 cifar10 -lp=AT --epochs=200 -wd=0.0002 --leverage=0.5
K processes:  torchrun --nproc_per_node=K ALP.py resnet32 cifar10 ...   (one per GPU; gloo on CPU)
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from attacks import ATTACKS
from checkpoints import (CheckpointError, build_model, checkpoint_meta, get_rng_state, load_checkpoint,
                         save_checkpoint, set_rng_state)
from data import DATASETS, DataError, DeviceLoader, train_val_splits
from models import MODELS
from training import (TRAINING_ATTACKS, VALIDATION_ATTACKS, GraphedStep, all_ranks, barrier, cuda_graph_refusal,
                      gather_from_all_ranks, mixed_precision, setup_process, train_epoch, train_step, validate,
                      validation_batch_size)
from utils import LEARNING_POLICIES, OPTIMIZERS, CLIParser, default_device, fail, plot_curves, write_csv

SNAPSHOT_EVERY = 5  # epochs


# --- command line ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = CLIParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=MODELS)
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--leverage", type=float, default=0.5, help="weight of the logit-pairing term (0: plain AT "
                   "on clean + adversarial halves)")
    p.add_argument("--attack", choices=TRAINING_ATTACKS, default="pgd-linf", help="attack that makes the pairs")
    p.add_argument("--epsilon", type=float, default=8 / 255, help="radius of the attack's ball")
    p.add_argument("--stepsize", type=float, default=2 / 255, help="absolute PGD step size")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("-mom", "--momentum", type=float, default=0.9)
    p.add_argument("-beta1", type=float, default=0.9, help="Adam's beta1")
    p.add_argument("-beta2", type=float, default=0.999, help="Adam's beta2")
    p.add_argument("-wd", "--weight_decay", type=float, default=2e-4)
    p.add_argument("-lr", "--lr", type=float, default=0.1)
    p.add_argument("-lp", "--learning_policy", choices=LEARNING_POLICIES, default="AT")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("-b", "--batch_size", type=int, default=128,
                   help="batch size per process: under torchrun the global batch is K times this")
    p.add_argument("--ratio", type=float, default=0.0,
                   help="share of the training split held out for validation (0: validate on the test split)")
    p.add_argument("--eval-freq", type=int, default=1, help="validate every this many epochs (and at the end)")
    p.add_argument("--resume", action="store_true", help="continue the run folder's last checkpoint")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data-root", default="./data")
    p.add_argument("--out", default="./runs", help="parent folder of the run folders")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if present)")
    p.add_argument("--subset", type=int, default=None,
                   help="use only the first N training and N validation images (quick trials)")
    cuda = p.add_argument_group("CUDA speed options (on by default where a GPU is used)")
    cuda.add_argument("--no-amp", dest="amp", action="store_false",
                      help="float32 forward passes instead of bf16 autocast")
    cuda.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    cuda.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false")
    cuda.add_argument("--compile", action="store_true", help="torch.compile the model")
    cuda.add_argument("--cuda-graph", action="store_true",
                      help="experimental, not yet run on a GPU: replay each training iteration as one CUDA graph "
                           "(one process, no --compile; elsewhere the eager step runs, with a note)")
    args = p.parse_args(argv)

    checks = [
        (args.epsilon > 0, "--epsilon must be > 0"),
        (args.stepsize > 0, "--stepsize must be > 0"),
        (args.steps > 0, "--steps must be > 0"),
        (args.batch_size > 0, "--batch_size must be > 0"),
        (args.epochs > 0, "--epochs must be > 0"),
        (args.leverage >= 0, "--leverage must be >= 0"),
        (0 <= args.ratio < 1, "--ratio must lie in [0, 1)"),
        (args.eval_freq > 0, "--eval-freq must be > 0"),
        (args.subset is None or args.subset > 0, "--subset must be > 0"),
        (args.lr > 0, "--lr must be > 0"),
        (not os.path.isfile(args.data_root), f"--data-root {args.data_root} is a file, not a folder"),
    ]
    for ok, message in checks:
        if not ok:
            p.error(message)
    try:
        args.device = str(torch.device(args.device or default_device()))
    except RuntimeError:
        p.error(f"--device {args.device!r} is not a device torch knows")
    return args


def run_name(args):
    """The run folder's name: data set, model and every hyper-parameter that changes the result."""
    name = (f"{args.dataset}-{args.model}-ALP-lev{args.leverage:g}-{args.attack}-eps{args.epsilon:.4g}"
            f"-steps{args.steps}-step{args.stepsize:.4g}-{args.optimizer}-lr{args.lr:g}-wd{args.weight_decay:g}"
            f"-{args.learning_policy}-ep{args.epochs}-b{args.batch_size}-seed{args.seed}")
    return name + (f"-subset{args.subset}" if args.subset else "")


# --- the run, in parts ---------------------------------------------------------------------------------------

def run_paths(args):
    run_dir = os.path.join(args.out, run_name(args))
    return run_dir, os.path.join(run_dir, "last.pt")


def check_run_folder(args, last_path):
    if args.resume and not os.path.isfile(last_path):
        fail(f"--resume: nothing to resume, no checkpoint at {last_path}")
    if not args.resume and os.path.exists(last_path):
        fail(f"{os.path.dirname(last_path)} already holds a run: pass --resume to continue it, or remove the folder")


def load_data(args, device, rank, world_size, channels_last):
    """(training loader, validation loader). Rank 0 downloads the data if needed; the others wait for it."""
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
    train_loader = DeviceLoader(train_x, train_y, args.batch_size, device, shuffle=True, crop=spec.crop,
                                flip=spec.flip, seed=args.seed, rank=rank, world_size=world_size,
                                channels_last=channels_last)
    val_loader = DeviceLoader(val_x, val_y, validation_batch_size(device), device, channels_last=channels_last)
    return train_loader, val_loader


def build_optimization(args, model, fused=False):
    """(optimizer, scheduler) as the command line says."""
    optimizer = OPTIMIZERS[args.optimizer](model.parameters(), lr=args.lr, momentum=args.momentum,
                                           weight_decay=args.weight_decay, betas=(args.beta1, args.beta2), fused=fused)
    return optimizer, LEARNING_POLICIES[args.learning_policy](optimizer, args.epochs)


def restore(last_path, rank, model, optimizer, scheduler):
    """(start epoch, metrics, best) from the run's last checkpoint; every random stream continues."""
    try:
        state = load_checkpoint(last_path)  # on the CPU: RNG states must stay CPU tensors
    except CheckpointError as e:
        fail(str(e))
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"][rank])
    return state["epoch"], state["metrics"], state["best"]


def open_log(run_dir, args):
    """log(line): printed and appended to the run's log.txt. Also writes args.json."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(vars(args), f, indent=2)
    log_file = open(os.path.join(run_dir, "log.txt"), "a")

    def log(line):
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()
    return log


def save_epoch(run_dir, last_path, model, optimizer, scheduler, meta, row, metrics, best, rng_states):
    """The epoch's checkpoints (best, snapshot, last) and metrics.csv."""
    weights = {"model": model.state_dict(), "meta": meta, "epoch": row["epoch"],
               "clean_accuracy": row["clean_accuracy"], "robust_accuracy": row["robust_accuracy"]}
    validated = row["clean_accuracy"] is not None
    for key in ("clean_accuracy", "robust_accuracy") if validated else ():
        if row[key] > best[key]:
            best[key] = row[key]
            save_checkpoint(weights, os.path.join(run_dir, f"best_{key.split('_')[0]}.pt"))
    if row["epoch"] % SNAPSHOT_EVERY == 0:
        save_checkpoint(weights, os.path.join(run_dir, f"epoch_{row['epoch']:03d}.pt"))
    save_checkpoint({**weights, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "metrics": metrics, "best": best, "rng": rng_states}, last_path)
    write_csv(metrics, os.path.join(run_dir, "metrics.csv"))


def epoch_line(row, epochs):
    accuracies = (f" | clean {100 * row['clean_accuracy']:.2f}% robust {100 * row['robust_accuracy']:.2f}%"
                  if row["clean_accuracy"] is not None else "")
    return (f"epoch {row['epoch']:3d}/{epochs} | lr {row['lr']:.4g} | loss {row['train_loss']:.4f} | "
            f"adv acc {100 * row['train_adv_accuracy']:.2f}%{accuracies} | {row['seconds']:.1f}s")


def main(argv=None):
    """Train as the command line says; returns the trained model (tests compare processes' weights)."""
    args = parse_args(argv)
    rank, world_size, device = setup_process(args.device)
    is_main = rank == 0
    spec = DATASETS[args.dataset]
    run_dir, last_path = run_paths(args)
    check_run_folder(args, last_path)

    use_cuda = device.type == "cuda"
    amp = args.amp and use_cuda
    channels_last = args.channels_last and use_cuda
    torch.backends.cudnn.benchmark = args.cudnn_benchmark and use_cuda
    autocast = mixed_precision("cuda", amp)
    graph_refusal = cuda_graph_refusal(device, world_size, args.compile) if args.cuda_graph else None
    use_graph = args.cuda_graph and graph_refusal is None
    train_loader, val_loader = load_data(args, device, rank, world_size, channels_last)

    torch.manual_seed(args.seed + rank)  # distinct PGD starts and crops per process; DDP syncs the weights
    model = build_model(args.model, args.dataset).to(device)  # the network itself: what checkpoints hold
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimization(args, model, fused=use_graph)
    attack = ATTACKS[args.attack](args.epsilon, steps=args.steps, stepsize=args.stepsize)
    validation_attack = ATTACKS["pgd-linf"](**VALIDATION_ATTACKS[spec.family])
    start_epoch, metrics, best = 0, [], {"clean_accuracy": -1.0, "robust_accuracy": -1.0}
    if args.resume:
        start_epoch, metrics, best = restore(last_path, rank, model, optimizer, scheduler)

    attack_model = torch.compile(model) if args.compile else model  # what attacks and validation call
    train_model = DistributedDataParallel(attack_model) if world_size > 1 else attack_model  # what the loss's
    # backward goes through: under torchrun it averages the gradients over the processes

    if use_graph:
        step = GraphedStep(train_model, attack_model, attack, optimizer, args.leverage, autocast, args.batch_size)
    else:
        def step(x, y):
            return train_step(train_model, attack_model, attack, optimizer, x, y, args.leverage, autocast)

    log = open_log(run_dir, args) if is_main else (lambda line: None)
    if graph_refusal:
        log(f"--cuda-graph: {graph_refusal}; the eager step runs instead")
    log(f"{'resuming' if args.resume else 'starting'} {run_dir} at epoch {start_epoch + 1}/{args.epochs} on "
        f"{world_size} x {device} (bf16 autocast {'on' if amp else 'off'}); {len(train_loader.labels)} training, "
        f"{len(val_loader.labels)} validation images")

    meta = checkpoint_meta(args.model, args.dataset, vars(args))
    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        lr = optimizer.param_groups[0]["lr"]
        totals, first_bad_batch = train_epoch(step, train_loader, epoch, progress=args.progress and is_main)
        scheduler.step()
        loss_sum, correct, count = all_ranks(totals).tolist()
        first_bad_batch = int(all_ranks(first_bad_batch, dist.ReduceOp.MAX))
        if first_bad_batch >= 0:
            kept = last_path if os.path.exists(last_path) else "none written yet"
            fail(f"the loss became NaN or infinite at epoch {epoch + 1}, batch {first_bad_batch + 1}; stopping "
                 f"(last good checkpoint: {kept})", status=1)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / count, "train_adv_accuracy": correct / count,
               "clean_accuracy": None, "robust_accuracy": None, "seconds": None}
        if is_main and ((epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs):
            row["clean_accuracy"], row["robust_accuracy"] = validate(attack_model, val_loader, validation_attack,
                                                                     autocast)
        row["seconds"] = round(time.time() - started, 2)
        rng_states = gather_from_all_ranks(get_rng_state())
        if is_main:
            metrics.append(row)
            save_epoch(run_dir, last_path, model, optimizer, scheduler, meta, row, metrics, best, rng_states)
            log(epoch_line(row, args.epochs))

    if is_main:
        plot_curves(metrics, os.path.join(run_dir, "curves.png"), title=run_name(args))
        log(f"done: best clean {100 * best['clean_accuracy']:.2f}%, best robust {100 * best['robust_accuracy']:.2f}%"
            f" (PGD on the validation split); checkpoints in {run_dir}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return model


if __name__ == "__main__":
    main()
