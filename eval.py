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

import os

import torch
import torch.distributed as dist

from data import DATASETS
from evaluation import (Runner, ThreatModelViolation, UnitStore, default_batch_size, default_json_path, evaluate,
                        evaluate_corruptions, evaluate_sweep, evaluate_transfer, evaluation_identity, open_units,
                        plan_summary, plan_sweep, plan_threat_models, recorded_batch_size, remove, shared,
                        units_folder)
from evaluation.command_line import parse_args, requested_evaluation
from evaluation.suite import epsilon_in_0_255_units, is_autoattack
from evaluation.console import (checked_report, estimate_printer, print_checks, print_corruptions, print_finished,
                                reporter, save, save_sweep_plot, stopped, warn)
from evaluation.inputs import corruption_files, load_model, load_source, load_test_images, resolve_device
from interrupts import Interrupted, interruptible
from training import setup_process
from training.lock import RunLock, RunLockHeld
from utils import default_device, describe_os_error, fail


def main(argv=None):
    args = parse_args(argv, description=__doc__)
    try:
        with interruptible():
            evaluate_checkpoint(args)
    except Interrupted as stop:  # outside the attacks, which say more
        stopped(stop, "run the same command to continue")


def check_plan(args, spec, lead):
    """The selection checked against the data set's suite before any data is read (the lead process says
    where each --attacks name runs: a name may run at several norms)."""
    family = spec.family
    try:
        if args.sweep:
            attacks = plan_sweep(family, args.sweep[0], args.attacks, args.aa_version)
        elif not args.corruptions:
            plan = plan_threat_models(family, args.norms, args.attacks, args.epsilon, args.aa_version,
                                      white_box_only=bool(args.transfer_from))
            for norm, label, epsilon, _ in plan:
                too_large = epsilon_in_0_255_units(norm, label, epsilon, spec.shape)
                if too_large:
                    raise ValueError(f"--epsilon: {too_large}")
            attacks = [attack for *_, table in plan for attack in table]
            if args.attacks and lead:
                print(f"--attacks {' '.join(args.attacks)} runs {plan_summary(plan)}", flush=True)
    except ValueError as e:
        fail(str(e))
    if (args.sweep or not args.corruptions) and args.aa_version != "standard" and not any(
            is_autoattack(name) for _, name, _ in attacks):
        fail("--aa-version picks AutoAttack's version, and the attacks selected run no AutoAttack: drop it, or "
             "add aa to --attacks")


def lock_evaluation(json_path):
    """One live process per evaluation, from its start to its JSON: a second one would run the same units of
    work again beside it. The lock is <json>.lock, an flock (dropped by the kernel however the process
    ends), removed once the evaluation is finished. None where the folder cannot be written: the JSON's own
    check says so."""
    folder, name = os.path.split(os.path.abspath(json_path))
    try:
        return RunLock(folder, name=name + ".lock")
    except RunLockHeld as held:
        fail(f"{json_path} is being evaluated by a running process (PID {held.args[0]}); wait for it to end, or "
             f"stop it")
    except OSError:
        return None


def let_go(lock):
    if lock is not None:
        try:
            os.remove(lock.path)  # under the lock: a process that opened it meanwhile finds it held until now
        except OSError:
            pass
        lock.release()


def evaluate_checkpoint(args):
    # Under torchrun: one process per GPU (gloo on CPU); rank 0 alone prints and writes.
    rank, world_size, device = setup_process(resolve_device(args.device or default_device()))
    lead = rank == 0
    model, meta = load_model(args.checkpoint, args.model, args.dataset, device)
    dataset = meta["dataset"]
    check_plan(args, DATASETS[dataset], lead)
    source, source_info = (load_source(args.transfer_from, args.source_model, dataset, args.checkpoint, device)
                           if args.transfer_from else (None, None))
    requested = requested_evaluation(args)
    json_path = args.json or default_json_path(args.checkpoint, requested)
    model_info = {"checkpoint": args.checkpoint, "model": meta.get("model"), "epoch": meta.get("epoch"),
                  "args": meta.get("args")}
    if args.corruptions:
        if lead:
            identity = evaluation_identity(model, meta["model"], dataset, device,
                                           corruption_files=corruption_files(args.corruptions))
            evaluate_checkpoint_on_corruptions(args, model, model_info, dataset, requested, identity, json_path)
        return

    lock = lock_evaluation(json_path) if lead else None  # before the units are read or written
    images, labels, data_root, warnings = load_test_images(meta, args.data_root, args.n)
    attacked = source if source is not None else model  # a transfer attacks the source
    try:
        batch_size = shared((args.batch_size or recorded_batch_size(json_path, device)
                             or default_batch_size(device, attacked, images, world_size)) if lead else None,
                            world_size)
    except torch.OutOfMemoryError:
        fail(f"{device} ran out of memory measuring the model's memory per image (other jobs on it?): free it, "
             f"or give the images per attack call with -b")
    identity = evaluation_identity(model, meta["model"], dataset, device, images=images, labels=labels,
                                   batch_size=batch_size, source=source, source_name=(source_info or {}).get("model"))
    finished = checked_report(json_path, requested, identity, args.force)
    if finished:
        let_go(lock)
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
        common["on_progress"] = reporter(args.checkpoint, args.transfer_from, device, json_path,
                                         {"data_root": data_root, "requested": requested, "identity": identity},
                                         warnings)
    try:
        if args.transfer_from:
            report = evaluate_transfer(source, model, images, labels, dataset, args.norms, args.attacks,
                                       args.epsilon, worst_case_only=args.worst_case_only,
                                       source_info=source_info, target_info=model_info, **common)
        elif args.sweep:
            report = evaluate_sweep(model, images, labels, dataset, args.sweep[0], args.sweep_epsilons,
                                    args.attacks, aa_version=args.aa_version, model_info=model_info, **common)
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
    except torch.OutOfMemoryError:
        fail(f"{device} ran out of memory in an attack at {batch_size} images per attack call (other jobs on it?): "
             f"give fewer with -b, e.g. -b {max(1, batch_size // 2)} (a new -b starts the attacks afresh)", status=1)
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
        save_sweep_plot(report, json_path)
    save(report, json_path)
    remove(units)  # the JSON holds every figure now
    let_go(lock)
    print_checks(report, json_path)


def evaluate_checkpoint_on_corruptions(args, model, model_info, dataset, requested, identity, json_path):
    """--corruptions, in the lead process alone: no attacks, so nothing to share out or to continue."""
    finished = checked_report(json_path, requested, identity, args.force)
    if finished:
        return print_finished(finished, json_path)
    try:
        report = evaluate_corruptions(model, args.corruptions, dataset, args.n, batch_size=args.batch_size,
                                      progress=args.progress, model_info=model_info)
    except ValueError as e:
        fail(str(e))
    report["evaluation"].update(requested=requested, identity=identity)
    save(report, json_path)
    print_corruptions(report, args.checkpoint, args.corruptions, json_path)


if __name__ == "__main__":
    main()
