"""Adversarial Logit Pairing (Kannan, Kurakin & Goodfellow, 2018).

Train on each clean batch and its PGD adversarial twin, and pull the two sets of logits together:

    loss = CE(f(x), y) + CE(f(x_adv), y) + leverage * MSE(f(x_adv), f(x))

One process:  python ALP.py resnet32 cifar10 -lp=AT --epochs=200 -wd=0.0002 --leverage=0.5
K processes:  torchrun --nproc_per_node=K ALP.py resnet32 cifar10 ...   (one per GPU; gloo on CPU)
"""
import datetime
import json
import math
import os
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from attacks import ATTACKS
from checkpoints import (CheckpointError, build_model, checkpoint_meta, get_rng_state, load_checkpoint,
                         load_weights, other_checkpoints, save_checkpoint, set_rng_state)
from data import DATASETS, DataError, DeviceLoader, data_digest, train_val_splits
from evaluation import CONSTANT_PREDICTOR_SHARE  # one threshold for training's warning and eval's flag
from models import MODELS
from cuda_graph import GraphedStep, cuda_graph_refusal
from training import (TRAINING_ATTACKS, VALIDATION_ATTACKS, all_ranks, barrier, gather_from_all_ranks,
                      mixed_precision, setup_process, train_epoch, train_step, validate, validation_batch_size)
from utils import (LEARNING_POLICIES, OPTIMIZERS, CLIParser, RunLock, RunLockHeld, default_device,
                   describe_os_error, fail, lock_holder, plot_curves, write_atomically, write_csv)

SNAPSHOT_EVERY = 5  # epochs

# Arguments that may change between a run and its --resume: where things are and how fast they run. Every
# other argument must be what the run started with (args.json), or the resumed run would be another run.
MAY_CHANGE_ON_RESUME = {"resume", "progress", "data_root", "out", "device", "amp", "channels_last",
                        "cudnn_benchmark", "compile", "cuda_graph"}


# --- command line ------------------------------------------------------------------------------------------

def build_parser():
    p = CLIParser(description=__doc__)
    p.add_argument("model", metavar="MODEL", choices=MODELS, help="network: " + ", ".join(MODELS))
    p.add_argument("dataset", metavar="DATASET", choices=DATASETS, help="data set: " + ", ".join(DATASETS))
    p.add_argument("--leverage", type=float, default=0.5, help="weight of the logit-pairing term (0: plain AT "
                   "on clean + adversarial halves)")
    p.add_argument("--attack", choices=TRAINING_ATTACKS, default="pgd-linf", help="attack that makes the pairs")
    p.add_argument("--epsilon", type=float, default=8 / 255, help="radius of the attack's ball")
    p.add_argument("--stepsize", type=float, default=2 / 255, help="absolute PGD step size")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd", help="optimiser")
    p.add_argument("-mom", "--momentum", type=float, default=0.9, help="SGD's momentum")
    p.add_argument("-beta1", type=float, default=0.9, help="Adam's beta1")
    p.add_argument("-beta2", type=float, default=0.999, help="Adam's beta2")
    p.add_argument("-wd", "--weight_decay", type=float, default=2e-4, help="weight decay (L2, in the optimiser)")
    p.add_argument("-lr", "--lr", type=float, default=0.1, help="initial learning rate")
    p.add_argument("-lp", "--learning_policy", choices=LEARNING_POLICIES, default="AT",
                   help="learning-rate schedule: " + ", ".join(LEARNING_POLICIES))
    p.add_argument("--epochs", type=int, default=200, help="epochs to train")
    p.add_argument("-b", "--batch_size", type=int, default=128,
                   help="batch size per process: under torchrun the global batch is K times this")
    p.add_argument("--ratio", type=float, default=0.0,
                   help="share of the training split held out for validation (0: validate on the test split)")
    p.add_argument("--eval-freq", type=int, default=1, help="validate every this many epochs (and at the end)")
    p.add_argument("--resume", action="store_true", help="continue the run folder's last checkpoint")
    p.add_argument("--progress", action="store_true", help="show progress bars (training and validation)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (data order, PGD starts, "
                   "--subset, --ratio)")
    p.add_argument("--data-root", default="./data", help="folder of the data sets (downloaded there if absent)")
    p.add_argument("--out", default="./runs", help="parent folder of the run folders")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if present)")
    p.add_argument("--subset", type=int, default=None,
                   help="use a seeded random, class-balanced N training and N validation images (quick trials)")
    cuda = p.add_argument_group("CUDA speed options (on by default where a GPU is used)")
    cuda.add_argument("--no-amp", dest="amp", action="store_false",
                      help="float32 forward passes instead of bf16 autocast")
    cuda.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                      help="keep images and weights in the contiguous (NCHW) memory format")
    cuda.add_argument("--no-cudnn-benchmark", dest="cudnn_benchmark", action="store_false",
                      help="do not let cuDNN time its algorithms for each shape")
    cuda.add_argument("--compile", action="store_true", help="torch.compile the model")
    cuda.add_argument("--cuda-graph", action="store_true",
                      help="experimental, not yet run on a GPU: replay each training iteration as one CUDA graph "
                           "(one process, no --compile; elsewhere the eager step runs, with a note)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)

    finite = {name: getattr(args, name) for name in ("epsilon", "stepsize", "leverage", "lr", "momentum",
                                                       "weight_decay", "beta1", "beta2", "ratio")}
    for name, value in finite.items():
        if not math.isfinite(value):
            p.error(f"--{name.replace('_', '-')} must be a finite number, not {value}")
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
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA GPU is available to this torch; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        p.error(f"--device {args.device}: there are only {torch.cuda.device_count()} CUDA devices")
    args.device = str(device)
    return args


def run_name(args):
    """The run folder's name: data set, model and the hyper-parameters that tell runs apart. The others that
    change the result (momentum, betas, --eval-freq, ...) are checked against args.json on --resume."""
    name = (f"{args.dataset}-{args.model}-ALP-lev{args.leverage:g}-{args.attack}-eps{args.epsilon:.4g}"
            f"-steps{args.steps}-step{args.stepsize:.4g}-{args.optimizer}-lr{args.lr:g}-wd{args.weight_decay:g}"
            f"-{args.learning_policy}-ep{args.epochs}-b{args.batch_size}-seed{args.seed}")
    return name + (f"-ratio{args.ratio:g}" if args.ratio else "") + (f"-subset{args.subset}" if args.subset else "")


# --- the run, in parts ---------------------------------------------------------------------------------------

def run_paths(args):
    run_dir = os.path.join(args.out, run_name(args))
    return run_dir, os.path.join(run_dir, "last.pt")


def check_run_folder(args, last_path, check_lock=True):
    """What the folder allows: fails unless a new run finds it free, or --resume finds a checkpoint to
    continue. Returns that checkpoint's state for --resume (None otherwise). check_lock=False: the caller
    holds the folder's lock itself."""
    run_dir = os.path.dirname(last_path)
    holder = lock_holder(run_dir) if check_lock else None
    if holder is not None:
        fail(f"{run_dir} is in use by a running process (PID {holder}); wait for it to end, or stop it")
    if not args.resume:
        if os.path.exists(last_path):
            fail(f"{run_dir} already holds a run: pass --resume to continue it, or remove the folder")
        return None
    if not os.path.isfile(last_path):
        fail(f"--resume: nothing to resume, no checkpoint at {last_path} (the run stopped before its first "
             f"epoch ended): start it again without --resume")
    try:
        state = load_checkpoint(last_path)
    except CheckpointError as e:
        fail(str(e))
    needed = ("optimizer", "scheduler", "metrics", "best", "rng", "epoch")
    missing = [key for key in needed if key not in state]
    if missing:
        fail(f"{last_path} cannot be resumed: it holds no {', '.join(missing)} (a best_*.pt or epoch_*.pt "
             f"copied over it?); {other_checkpoints(last_path)}")
    recorded = first_run_args(run_dir)
    now = vars(args)
    changed = sorted(k for k in recorded if k in now and k not in MAY_CHANGE_ON_RESUME and recorded[k] != now[k])
    if changed:
        fail(f"--resume: {', '.join(f'--{k} {now[k]} (the run has {recorded[k]})' for k in changed)};"
             f" resume with the run's own arguments (see {os.path.join(run_dir, 'args.json')})")
    return state


def first_run_args(run_dir):
    """The arguments the run in run_dir started with, from its args.json ({} without one)."""
    try:
        with open(os.path.join(run_dir, "args.json")) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record["runs"][0]["args"] if "runs" in record else record  # older args.json: the bare arguments


def load_data(args, device, rank, world_size, channels_last):
    """(training loader, validation loader, digest of their data). Rank 0 downloads the data if needed; the
    others wait for it."""
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
    digest = data_digest(train_x, train_y, val_x, val_y)
    train_loader = DeviceLoader(train_x, train_y, args.batch_size, device, shuffle=True, crop=spec.crop,
                                flip=spec.flip, seed=args.seed, rank=rank, world_size=world_size,
                                channels_last=channels_last)
    val_loader = DeviceLoader(val_x, val_y, validation_batch_size(device), device, channels_last=channels_last)
    return train_loader, val_loader, digest


def take_run_folder(run_dir, args, last_path):
    """Create the run folder and lock it for this process; re-checks the folder under the lock, since
    another run may have taken it while the data loaded. Returns (lock, resumed state or None)."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        lock = RunLock(run_dir)
    except RunLockHeld as held:
        fail(f"{run_dir} is in use by a running process (PID {held.args[0]}); wait for it to end, or stop it")
    except OSError as e:
        fail(f"cannot create the run folder {run_dir} ({e.strerror or e})")
    return lock, check_run_folder(args, last_path, check_lock=False)


def build_optimization(args, model, fused=False):
    """(optimizer, scheduler) as the command line says."""
    optimizer = OPTIMIZERS[args.optimizer](model.parameters(), lr=args.lr, momentum=args.momentum,
                                           weight_decay=args.weight_decay, betas=(args.beta1, args.beta2),
                                           fused=fused)
    return optimizer, LEARNING_POLICIES[args.learning_policy](optimizer, args.epochs)


def restore(state, last_path, rank, world_size, data_id, model, optimizer, scheduler):
    """(start epoch, metrics, best) from the run's last checkpoint; every random stream continues."""
    trained_on = state["meta"].get("data_digest")
    if trained_on is not None and trained_on != data_id:
        fail(f"--resume: the data loaded now differs from the data {last_path} was trained on (digest "
             f"{data_id[:12]} vs {trained_on[:12]}): same data set files, --subset, --ratio and --seed?")
    if len(state["rng"]) != world_size:
        fail(f"--resume: {last_path} was written by {len(state['rng'])} processes; resume it with as many")
    try:
        load_weights(model, state["model"], last_path)  # names the keys that do not fit, if any
    except CheckpointError as e:
        fail(f"--resume: {e}")
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        fail(f"--resume: {last_path} does not fit this model and optimiser ({str(e).splitlines()[0]})")
    set_rng_state(state["rng"][rank])
    return state["epoch"], state["metrics"], state["best"]


def in_force(args, device, world_size, amp, channels_last, data_id):
    """What actually ran, after the device checks: args.json records it beside the command line."""
    return {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "device": str(device), "world_size": world_size, "torch": torch.__version__, "amp": amp,
            "channels_last": channels_last, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "compile": args.compile, "data_digest": data_id, "pid": os.getpid()}


def write_args(run_dir, args, record):
    """args.json: {"runs": [{"args": ..., "in_force": ...}, ...]}, one entry per start and per --resume."""
    path = os.path.join(run_dir, "args.json")
    runs = []
    if args.resume and os.path.isfile(path):
        try:
            with open(path) as f:
                old = json.load(f)
            runs = old["runs"] if "runs" in old else [{"args": old}]
        except (OSError, ValueError, KeyError, TypeError):
            runs = []  # unreadable: the checkpoint is what counts; start the record again
    runs.append({"args": vars(args), "in_force": record})
    write_atomically(path, json.dumps({"runs": runs}, indent=2) + "\n")


def open_log(run_dir):
    """log(line): printed and appended to the run's log.txt."""
    path = os.path.join(run_dir, "log.txt")
    log_file = open(path, "a")

    def log(line):
        print(line, flush=True)
        try:
            log_file.write(line + "\n")
            log_file.flush()
        except OSError as e:
            e.filename = path
            raise
    return log


def repair_after_kill(run_dir, metrics, epochs, log):
    """A kill between the last.pt rename and the writes after it leaves metrics.csv and log.txt an epoch
    short, and leaves *.tmp files: metrics.csv is rewritten from the checkpoint's metrics, missing epoch
    lines are added to the log, leftovers removed."""
    for name in os.listdir(run_dir):
        if name.endswith(".tmp"):
            os.remove(os.path.join(run_dir, name))
    if metrics:
        write_csv(metrics, os.path.join(run_dir, "metrics.csv"))
    with open(os.path.join(run_dir, "log.txt")) as f:
        logged = set(f.read().splitlines())
    for row in metrics:
        line = epoch_line(row, epochs)
        if line not in logged:
            log(f"(epoch {row['epoch']}'s line, restored from last.pt: the run was stopped before it was logged)")
            log(line)


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


def weights_are_finite(model):
    values = [v for v in model.state_dict().values() if v.is_floating_point()]
    return bool(torch.stack([torch.isfinite(v).all() for v in values]).all())


class ValidationProgress:
    """The validation loader behind a progress bar (validation may be most of an epoch: PGD-100 on MNIST)."""

    def __init__(self, loader, epoch):
        self.loader, self.labels, self.desc = loader, loader.labels, f"validating epoch {epoch}"

    def epoch(self, epoch=0):
        return tqdm(self.loader.epoch(epoch), total=len(self.loader), desc=self.desc, leave=False)


@torch.no_grad()
def most_predicted_class(model, loader, num_classes, autocast):
    """(class, share of the loader's images predicted as it): a model that predicts one class for nearly
    all images reports accuracy that says nothing about what it learnt."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(num_classes, dtype=torch.long, device=loader.labels.device)
    for x, _ in loader.epoch():
        with autocast():
            counts += torch.bincount(model(x).argmax(1), minlength=num_classes)
    model.train(was_training)
    top = int(counts.argmax())
    return top, counts[top].item() / len(loader.labels)


def one_class_warning(top, share, epoch):
    """The log's warning when a model gives one class to most validation images, or None."""
    if share <= CONSTANT_PREDICTOR_SHARE:
        return None
    return (f"warning: after epoch {epoch} the model predicts class {top} for {100 * share:.0f}% of the validation "
            f"images: its accuracy says little yet (more epochs or images needed?)")


def epoch_line(row, epochs):
    accuracies = (f" | clean {100 * row['clean_accuracy']:.2f}% robust {100 * row['robust_accuracy']:.2f}%"
                  if row["clean_accuracy"] is not None else "")
    return (f"epoch {row['epoch']:3d}/{epochs} | lr {row['lr']:.4g} | loss {row['train_loss']:.4f} | "
            f"adv acc {100 * row['train_adv_accuracy']:.2f}%{accuracies} | {row['seconds']:.1f}s")


def main(argv=None):
    """Train as the command line says; returns the trained model (tests compare processes' weights), or
    None when --resume finds the run finished."""
    args = parse_args(argv)
    run_dir, last_path = run_paths(args)
    resumed = check_run_folder(args, last_path)  # before the data loads: a refusal costs nothing
    if resumed is not None and resumed["epoch"] >= args.epochs:
        print(f"{run_dir} is finished: all {args.epochs} epochs are done, nothing to resume")
        return None
    rank, world_size, device = setup_process(args.device)
    is_main = rank == 0
    spec = DATASETS[args.dataset]

    use_cuda = device.type == "cuda"
    amp = args.amp and use_cuda
    channels_last = args.channels_last and use_cuda
    torch.backends.cudnn.benchmark = args.cudnn_benchmark and use_cuda
    autocast = mixed_precision("cuda", amp)
    graph_refusal = cuda_graph_refusal(device, world_size, args.compile) if args.cuda_graph else None
    use_graph = args.cuda_graph and graph_refusal is None
    train_loader, val_loader, data_id = load_data(args, device, rank, world_size, channels_last)
    if is_main:  # one run per folder, from here to the process's end
        lock, resumed = take_run_folder(run_dir, args, last_path)

    torch.manual_seed(args.seed + rank)  # distinct PGD starts and crops per process; DDP syncs the weights
    model = build_model(args.model, args.dataset).to(device)  # the network itself: what checkpoints hold
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimization(args, model, fused=use_graph)
    attack = ATTACKS[args.attack](args.epsilon, steps=args.steps, stepsize=args.stepsize)
    validation_attack = ATTACKS["pgd-linf"](**VALIDATION_ATTACKS[spec.family])
    start_epoch, metrics, best = 0, [], {"clean_accuracy": -1.0, "robust_accuracy": -1.0}
    if args.resume:
        start_epoch, metrics, best = restore(resumed, last_path, rank, world_size, data_id, model, optimizer,
                                             scheduler)

    attack_model = torch.compile(model) if args.compile else model  # what attacks and validation call
    train_model = DistributedDataParallel(attack_model) if world_size > 1 else attack_model  # what the loss's
    # backward goes through: under torchrun it averages the gradients over the processes

    if use_graph:
        step = GraphedStep(train_model, attack_model, attack, optimizer, args.leverage, autocast, args.batch_size,
                           log=lambda line: log(line))  # the run's log, opened below
    else:
        def step(x, y):
            return train_step(train_model, attack_model, attack, optimizer, x, y, args.leverage, autocast)

    log = lambda line: None  # noqa: E731 - only rank 0 writes
    if is_main:
        with one_line_on_write_errors():
            write_args(run_dir, args, in_force(args, device, world_size, amp, channels_last, data_id))
            log = open_log(run_dir)
            if args.resume:
                repair_after_kill(run_dir, metrics, args.epochs, log)
    if graph_refusal:
        log(f"--cuda-graph: {graph_refusal}; the eager step runs instead")
    log(f"{'resuming' if args.resume else 'starting'} {run_dir} at epoch {start_epoch + 1}/{args.epochs} on "
        f"{world_size} x {device} (bf16 autocast {'on' if amp else 'off'}); {len(train_loader.labels)} training, "
        f"{len(val_loader.labels)} validation images")

    meta = checkpoint_meta(args.model, args.dataset, vars(args), data_digest=data_id)
    for epoch in range(start_epoch, args.epochs):
        started = time.time()
        lr = optimizer.param_groups[0]["lr"]
        totals, first_bad_batch = train_epoch(step, train_loader, epoch, progress=args.progress and is_main)
        scheduler.step()
        loss_sum, correct, count = all_ranks(totals).tolist()
        first_bad_batch = int(all_ranks(first_bad_batch, dist.ReduceOp.MAX))
        kept = f"last good checkpoint: {last_path if os.path.exists(last_path) else 'none written yet'}"
        if first_bad_batch >= 0:
            fail(f"the loss became NaN or infinite at epoch {epoch + 1}, batch {first_bad_batch + 1}; stopping "
                 f"({kept})", status=1)
        if not weights_are_finite(model):  # the loss is checked before each step, the weights after the last
            fail(f"the weights became NaN or infinite in epoch {epoch + 1}'s last step; stopping ({kept})",
                 status=1)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / count, "train_adv_accuracy": correct / count,
               "clean_accuracy": None, "robust_accuracy": None, "seconds": None}
        if is_main and ((epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs):
            loader = ValidationProgress(val_loader, epoch + 1) if args.progress else val_loader
            row["clean_accuracy"], row["robust_accuracy"] = validate(attack_model, loader, validation_attack,
                                                                     autocast)
            warning = one_class_warning(*most_predicted_class(attack_model, val_loader, spec.num_classes, autocast),
                                        epoch + 1)
            if warning:
                log(warning)
        row["seconds"] = round(time.time() - started, 2)
        rng_states = gather_from_all_ranks(get_rng_state())
        if is_main:
            metrics.append(row)
            with one_line_on_write_errors():
                save_epoch(run_dir, last_path, model, optimizer, scheduler, meta, row, metrics, best, rng_states)
                log(epoch_line(row, args.epochs))

    if is_main:
        with one_line_on_write_errors():
            plot_curves(metrics, os.path.join(run_dir, "curves.png"), title=run_name(args))
            log(f"done: best clean {100 * best['clean_accuracy']:.2f}%, best robust "
                f"{100 * best['robust_accuracy']:.2f}% (PGD on the validation split); checkpoints in {run_dir}")
        lock.release()
    if dist.is_initialized():
        dist.destroy_process_group()
    return model


@contextmanager
def one_line_on_write_errors():
    """A full disk (or a folder that turned read-only) while writing run files: one line, exit status 2.
    Checkpoints and metrics.csv are written through a temporary file, so the previous ones stay."""
    try:
        yield
    except OSError as e:
        fail(describe_os_error(e))


if __name__ == "__main__":
    main()
