"""Check one of the reference's published tables: train with its command, attack with its attacks, compare.

    python reproduce.py mnist                                        # the reference's MNIST table, in full
    python reproduce.py mnist --epochs 3 --subset 2000 --images 100  # a shortened trial, labelled as one

1. training: ALP.py with the reference's command for the table, unchanged, in the folder's training/;
2. evaluation: eval.py on the final checkpoint (last.pt), one run per threat model with the attacks of the
   reference's table, on the full test split;
3. report: the reference's figures and ours side by side, each difference, and a flag on every figure
   farther from the reference's than run-to-run randomness explains (the rule is printed with them);
   written to the folder as report.json, report.md and report.png.
The two scripts' progress bars and estimates show as they run, and once ALP.py has timed its first batches
this script says how long training and evaluation will take. Killed or stopped by Ctrl-C at any moment, the
same command continues (ALP.py --resume, eval.py's units of work). A folder holding another table's or
another command's work is refused. --epochs, --subset and --images shorten the work: the folder, the
printout and every file then say it is a shortened trial, not a reproduction. The reference's figures, their
source and commands: reference.py.
"""
from interrupts import stop_in_one_line

if __name__ == "__main__":
    stop_in_one_line()  # first: a Ctrl-C while torch imports ends in one line too

import os
import sys

from checkpoints import CheckpointError
from evaluation.store import weights_digest
from interrupts import Interrupted, interruptible
from reference import ROW_TABLES, SOURCE, TABLES, TEST_IMAGES, row_training
from reproduction.child_scripts import LogFollower, run_or_stop
from reproduction.comparison import compare
from reproduction.estimate import Estimate
from reproduction.folder import checked, claim, complete, epochs_done, moved, run_folder
from reproduction.plan import (command_epochs, evaluation_argv, evaluations, reference_epochs, shortening,
                               trial_label, training_argv, with_epochs)
from reproduction.report import NORM_SYMBOLS, print_report, write_report
from reproduction.rows import compare_row, print_row_report, row_evaluations, write_row_report
from utils import CLIParser, default_device, fail, read_json
from weights import model_from_file


# --- command line ------------------------------------------------------------------------------------------

def tables_help():
    lines = ["tables (TABLE: the training command it runs, then one eval.py run per threat model on its last.pt):"]
    for name, table in TABLES.items():
        lines.append(f"  {name}: {table.title}")
        lines.append(f"    python ALP.py {' '.join(table.training)}")
        for norm, attacks in evaluations(table):
            lines.append(f"    python eval.py <run>/last.pt {' '.join(evaluation_argv(norm, attacks))}")
    lines.append(f"Figures and commands: reference.py, from {SOURCE['repository']} {SOURCE['file']} at commit "
                 f"{SOURCE['commit'][:7]}.")
    for name, table in ROW_TABLES.items():
        lines.append(f"  {name}: {table.title} (ℓ∞ {table.epsilon}, the first {table.images:,} test images; "
                     f"from {table.source['repository']} {table.source['file']} at commit "
                     f"{table.source['commit'][:7]}), one training run per row (--rows):")
        for row_name, row in table.rows.items():
            lines.append(f"    {row_name} ({row.title}): python {row.script} {' '.join(row_training(table, row))}")
        for stem, norm, attacks, _ in row_evaluations(table):
            lines.append(f"    python eval.py <row>/last.pt {' '.join(evaluation_argv(norm, attacks))} "
                         f"--images {table.images}")
    return "\n".join(lines)


def build_parser():
    p = CLIParser(description=__doc__, epilog=tables_help())
    names = [*TABLES, *ROW_TABLES]
    p.add_argument("table", metavar="TABLE", choices=names, nargs="?", help="the published table: " + ", ".join(names))
    p.add_argument("--rows", nargs="+", metavar="ROW",
                   help="a table of rows (" + ", ".join(ROW_TABLES) + "): train and evaluate only these rows "
                        "(default: all); the report holds every row evaluated in the folder so far")
    trial = p.add_argument_group("shortened trial (labelled everywhere as not a reproduction)")
    trial.add_argument("--epochs", type=int, help="train this many epochs instead of the reference's")
    trial.add_argument("--subset", type=int, help="train and validate on N images of each split "
                                                           "(ALP.py --subset)")
    trial.add_argument("--images", type=int, help="evaluate the first N test images instead of all")
    p.add_argument("--data-root", help="folder of the data sets, for ALP.py and eval.py (default: theirs, "
                                       "./data)")
    p.add_argument("--out", help="this reproduction's folder (default: reproductions/TABLE, or "
                                 "reproductions/TABLE-trial-... for a shortened trial)")
    p.add_argument("--device", help="cpu, cuda, cuda:1..., for ALP.py and eval.py (default: cuda if present, "
                                     "else cpu)")
    return p


# --- training and evaluation -----------------------------------------------------------------------------

def train(argv, parent, epochs, estimate, script="ALP.py"):
    """The final checkpoint of the training run, training or continuing it first."""
    folder = run_folder(parent)
    if folder and epochs_done(folder) >= epochs:
        print(f"training: done, {epochs} epochs in {folder}", flush=True)
        return os.path.join(folder, "last.pt")
    resume = folder is not None and os.path.isfile(os.path.join(folder, "last.pt"))
    run_or_stop(script, [*argv, *(["--resume"] if resume else [])], "training",
                LogFollower(parent, estimate.read_training_line))
    folder = run_folder(parent)
    if not folder or epochs_done(folder) < epochs:
        fail(f"training ended before its {epochs} epochs (see {script}'s lines above)", status=1)
    return os.path.join(folder, "last.pt")


def evaluate(checkpoint, weights, norm, attacks, json_path, common, data_root, figures):
    """eval.py's report of the checkpoint (whose weights have the digest `weights`) at this norm, running or
    continuing it first, and checked (reproduction.folder.checked) before any figure of it is used."""
    report = read_json(json_path)
    if complete(report, weights):
        print(f"evaluation at {NORM_SYMBOLS[norm]}: done, {json_path}", flush=True)
        return checked(json_path, report, weights, data_root, figures)
    run_or_stop("eval.py", [checkpoint, *evaluation_argv(norm, attacks), "--json", json_path, *common,
                            *(["--force"] if moved(report, checkpoint) else [])],
                f"evaluation at {NORM_SYMBOLS[norm]}")
    report = read_json(json_path)
    if not complete(report, weights):
        fail(f"eval.py ended well but {json_path} holds no finished evaluation of {checkpoint}", status=1)
    return checked(json_path, report, weights, data_root, figures)


def digest_of(checkpoint):
    """The digest of the checkpoint's weights, as eval.py records it (evaluation.store.weights_digest)."""
    try:
        return weights_digest(model_from_file(checkpoint)[0])
    except CheckpointError as e:
        fail(str(e))


def placement(args, cut):
    """Where a reproduction goes, the same for every kind of table: (its folder, its command as request.json
    records it, the data root made absolute, the --data-root and --device flags its scripts get). cut: the
    shortening flags in force ({} for a reproduction)."""
    trial_name = "-".join(f"{key}{value}" for key, value in cut.items())
    folder = args.out or os.path.join("reproductions", args.table + (f"-trial-{trial_name}" if cut else ""))
    command = " ".join(["reproduce.py", args.table, *(f"--{key} {value}" for key, value in cut.items())])
    data_root = os.path.abspath(args.data_root or "./data")  # the scripts' default, where it is now
    return folder, command, data_root, ["--data-root", data_root, *(["--device", args.device] if args.device else [])]


# --- main --------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.table is None:
        parser.error(f"name a table: {', '.join([*TABLES, *ROW_TABLES])} (--help shows the commands each runs)")
    for flag in ("epochs", "subset", "images"):
        if getattr(args, flag) is not None and getattr(args, flag) <= 0:
            parser.error(f"--{flag} must be a positive integer, not {getattr(args, flag)}")
    if args.table in ROW_TABLES:
        return reproduce_rows(parser, args)
    if args.rows:
        parser.error(f"--rows chooses rows of a table of rows ({', '.join(ROW_TABLES)}); {args.table} is one "
                     f"training run")
    table = TABLES[args.table]
    cut = shortening(table, args.epochs, args.subset, args.images)
    folder, command, data_root, where = placement(args, cut)
    epochs = cut.get("epochs", reference_epochs(table))
    training = training_argv(table, cut.get("epochs")) + ([f"--subset={cut['subset']}"] if "subset" in cut else [])
    runs = evaluations(table)
    images = cut.get("images", TEST_IMAGES)
    claim(folder, {"table": args.table, "command": command, "training": training,
                   "evaluations": [evaluation_argv(norm, attacks) for norm, attacks in runs], "images": images,
                   "data_root": data_root})
    label = trial_label(table, cut, images)
    print(label or f"REPRODUCTION of the reference's {table.title} table", flush=True)
    print(f"reproduce.py: {table.title} in {folder}: training with {table.training_source} "
          f"({epochs} epoch{'s' if epochs > 1 else ''}), then {len(runs)} eval.py runs on {images:,} test images; "
          f"the estimate of both follows ALP.py's timing of its first batches", flush=True)
    estimate = Estimate(folder, table.dataset, images, runs, args.device or default_device())
    stage = "training"
    try:
        with interruptible():
            checkpoint = train([*training, "--out", os.path.join(folder, "training"), *where],
                               os.path.join(folder, "training"), epochs, estimate)
            checkpoint = os.path.abspath(checkpoint)
            weights = digest_of(checkpoint)
            json_paths = [os.path.abspath(os.path.join(folder, f"eval-{norm}.json")) for norm, _ in runs]
            left = [(norm, attacks) for (norm, attacks), path in zip(runs, json_paths)
                    if not complete(read_json(path), weights)]
            if estimate.validation_images is None:  # training was done before this start
                estimate.say_for_evaluation(left)
            stage = "evaluation"
            common = [*(["--images", str(images)] if "images" in cut else []), *where]
            reports = [evaluate(checkpoint, weights, norm, attacks, path, common, data_root,
                                [(norm, t.epsilon, column.label) for t in table.threat_models if t.norm == norm
                                 for column in t.columns])
                       for (norm, attacks), path in zip(runs, json_paths)]
            stage = "report"
            n, compared = compare(table, reports)
            label = trial_label(table, cut, n)
            paths = write_report(folder, table, args.table, label, n, compared,
                                 {"command": f"python ALP.py {' '.join(training)}", "checkpoint": checkpoint,
                                  "data_root": data_root},
                                 json_paths)
            print_report(table.title, label, n, compared, paths)
    except Interrupted as stop:
        print(f"reproduce.py: stopped by {stop} in the {stage}; the same command continues", file=sys.stderr)
        sys.exit(stop.exit_status)


def reproduce_rows(parser, args):
    """A table of rows (reference.ROW_TABLES): for each chosen row, its script trains it and eval.py runs the
    table's baseline attack, then the default ℓ∞ suite, on its last.pt; then the report of every row the
    folder holds finished."""
    table = ROW_TABLES[args.table]
    unknown = sorted(set(args.rows or ()) - set(table.rows))
    if unknown:
        parser.error(f"--rows: {', '.join(unknown)} not in {args.table} (its rows: {', '.join(table.rows)})")
    chosen = [name for name in table.rows if name in (args.rows or table.rows)]
    full = (command_epochs(table.common), table.images)
    cut = shortening(table, args.epochs, args.subset, args.images, full=full)
    folder, command, data_root, where = placement(args, cut)
    epochs, images = cut.get("epochs", full[0]), cut.get("images", table.images)
    subset = [f"--subset={cut['subset']}"] if "subset" in cut else []
    commands = {name: [row.script, *with_epochs(row_training(table, row), cut.get("epochs")), *subset]
                for name, row in table.rows.items()}
    runs = row_evaluations(table)
    claim(folder, {"table": args.table, "command": command, "rows": commands,
                   "evaluations": [evaluation_argv(norm, attacks) for _, norm, attacks, _ in runs], "images": images,
                   "data_root": data_root})
    label = trial_label(table, cut, images, full=full)
    common = ["--images", str(images), *where]
    print(label or f"REPRODUCTION of {table.title}", flush=True)
    print(f"reproduce.py: {table.title} in {folder}: rows {', '.join(chosen)}, each trained by its script "
          f"({epochs} epoch{'s' if epochs > 1 else ''}), then {len(runs)} eval.py runs on {images:,} test "
          f"images; each row's estimate follows its script's timing of its first batches", flush=True)
    stage = "training"
    try:
        with interruptible():
            for name in chosen:
                row_folder = os.path.join(folder, name)
                print(f"\n{table.rows[name].title} ({name}):", flush=True)
                estimate = Estimate(row_folder, table.dataset, images,
                                    [(norm, attacks) for _, norm, attacks, _ in runs], args.device or default_device())
                stage = f"training of {name}"
                script, *argv = commands[name]
                checkpoint = os.path.abspath(train([*argv, "--out", os.path.join(row_folder, "training"), *where],
                                                   os.path.join(row_folder, "training"), epochs, estimate, script))
                weights = digest_of(checkpoint)
                paths = [os.path.abspath(os.path.join(row_folder, f"eval-{stem}.json")) for stem, *_ in runs]
                if estimate.validation_images is None:  # trained before this start
                    estimate.say_for_evaluation([(norm, attacks) for (_, norm, attacks, _), path in zip(runs, paths)
                                                 if not complete(read_json(path), weights)])
                stage = f"evaluation of {name}"
                for (_, norm, attacks, figures), path in zip(runs, paths):
                    evaluate(checkpoint, weights, norm, attacks, path, common, data_root, figures)
            stage = "report"
            report_rows(folder, table, args.table, label, commands, runs, data_root)
    except Interrupted as stop:
        print(f"reproduce.py: stopped by {stop} in the {stage}; the same command continues", file=sys.stderr)
        sys.exit(stop.exit_status)


def report_rows(folder, table, table_name, label, commands, runs, data_root):
    """The report of every row whose evaluations the folder holds finished, chosen this time or before, each
    report checked (reproduction.folder.checked) before any figure of it is used."""
    compared, rows_run, n = [], {}, None
    for name, row in table.rows.items():
        parent = os.path.join(folder, name, "training")
        run = run_folder(parent) if os.path.isdir(parent) else None
        checkpoint = os.path.abspath(os.path.join(run, "last.pt")) if run else None
        if checkpoint is None or not os.path.isfile(checkpoint):
            continue
        weights = digest_of(checkpoint)
        paths = [os.path.abspath(os.path.join(folder, name, f"eval-{stem}.json")) for stem, *_ in runs]
        reports = [read_json(path) for path in paths]
        if not all(complete(report, weights) for report in reports):
            continue
        reports = [checked(path, report, weights, data_root, figures)
                   for path, report, (*_, figures) in zip(paths, reports, runs)]
        compared.append(compare_row(table, row, *reports))
        n = reports[-1]["evaluation"]["n"]
        rows_run[name] = {"command": f"python {' '.join(commands[name])}", "checkpoint": checkpoint,
                          "data_root": data_root, "reports": paths}
    if compared:
        paths = write_row_report(folder, table, table_name, label, n, compared, rows_run)
        print_row_report(table, label, n, compared, paths)


if __name__ == "__main__":
    main()
