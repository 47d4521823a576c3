"""The entry points: robust accuracy under the data set's suite (evaluate), under transfer attacks
(evaluate_transfer) and over a range of epsilons (evaluate_sweep). Each builds the JSON report, makes a Job
of every attack to run and hands the jobs to a Runner (units.py) in rounds: every job of a round is
independent of the others, so a round is what can be shared out over processes."""
import torch

from attacks.common import device_of, flat_norm
from data import DATASETS

from .checks import constant_predictor_check, masking_checks, sweep_checks
from .suite import (SANITY, check_sweep_epsilons, cli_name, epsilon_warnings, parse_epsilon,
                    plan_sweep, plan_threat_models, run_order)
from .store import evaluation_digests, unit_context
from .units import Job, Runner, as_float, clean_predictions, evaluates_models, stream_seed
from .width import default_batch_size


def check_inputs(images, labels, dataset, batch_size=None):
    """Images N x C x H x W of the data set's family (uint8, or float in [0, 1]), N integer labels in range
    and a positive batch size (or None); raises ValueError with one sentence otherwise."""
    check_batch_size(batch_size)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    spec = DATASETS[dataset]
    shape = spec.shape
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError("images and labels must be torch tensors")
    if images.dim() != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"images must be N x {' x '.join(map(str, shape))} for {dataset}, "
                         f"not {' x '.join(map(str, images.shape))}")
    if len(images) == 0:
        raise ValueError("no images to evaluate")
    if labels.dim() != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be a vector of {len(images)} class indices, one per image, "
                         f"not of shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, not {labels.dtype}")
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise ValueError(f"labels must lie in 0..{spec.num_classes - 1} for {dataset}")
    if images.dtype != torch.uint8:
        if not images.dtype.is_floating_point:
            raise ValueError(f"images must be uint8 or float in [0, 1], not {images.dtype}")
        if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise ValueError("float images must lie in [0, 1]: the model is given them as they are, so pass "
                             "uint8 images or floats divided by 255 (a model that needs normalised inputs "
                             "normalises them in its forward)")


def as_list(selection):
    """A selection (norms, attacks, epsilons) as a list: one name or number alone reads as a list of one;
    None stays None (everything)."""
    if selection is None or isinstance(selection, list):
        return selection
    if isinstance(selection, (str, int, float)):
        return [selection]
    return list(selection)


def check_batch_size(batch_size):
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer (or None for the default), not {batch_size!r}")


# The JSON report's format: raised whenever its keys change meaning, or figures computed before the change
# cannot stand beside later ones (an attack's definition changed). eval.py refuses a report of a newer
# format, and does not reuse an older one. 1: reports without this key; 2: reports that record the digests
# of what they evaluated.
REPORT_FORMAT = 2


def new_report(model_info, dataset, n, batch_size, device, seed, aa_version, processes, selection):
    """The JSON report's skeleton: every key present from the start, filled in as results arrive."""
    return {
        "format": REPORT_FORMAT,
        "checkpoint": model_info.get("checkpoint"), "epoch": model_info.get("epoch"),
        "model": model_info.get("model"), "dataset": dataset, "num_classes": DATASETS[dataset].num_classes,
        "training_args": model_info.get("args"),
        "evaluation": {"n": n, "batch_size": batch_size, "device": str(device), "seed": seed,
                       "processes": processes, **selection},
        "aa_version": aa_version, "complete": False, "clean": None,
        "threat_models": [], "sanity": None, "masking_checks": None,
        "transfer": None, "sweep": None, "corruptions": None, "warnings": [],
    }


class Session:
    """What every entry point does first, once its inputs are checked: inputs moved to the model's device, the batch
    size chosen, the report begun, the clean predictions made. Then it runs rounds of jobs."""

    def __init__(self, model, images, labels, dataset, *, seed, batch_size, aa_version, selection,
                 model_info, runner, progress, on_progress, norm_epsilons, source=None):
        self.model, self.dataset, self.seed, self.on_progress = model, dataset, seed, on_progress
        self.device = device_of(model)
        self.images, self.labels = images.to(self.device), labels.to(self.device).long()
        self.n = len(labels)
        self.runner = runner or Runner(progress=progress)
        attacked = model if source is None else source.to(self.device)  # a transfer attacks the source
        self.batch_size = batch_size or default_batch_size(self.device, attacked, self.images, self.runner.world_size)
        self.report = new_report(model_info or {"model": type(model).__name__}, dataset, self.n, self.batch_size,
                                 self.device, seed, aa_version, self.runner.world_size, selection)
        digests = evaluation_digests(model, images, labels, source)
        self.report["evaluation"]["digests"] = digests
        self.context = unit_context(digests, self.device)
        self.report["warnings"] += epsilon_warnings(norm_epsilons, DATASETS[dataset].shape)
        self.num_classes = DATASETS[dataset].num_classes
        self.predicted = clean_predictions(model, self.images, self.batch_size, self.num_classes)
        self.correct = self.predicted == self.labels.cpu()
        self.report["clean"] = {"correct": int(self.correct.sum()), "accuracy": int(self.correct.sum()) / self.n}

    def notify(self, kind, record=None):
        """on_progress(report, kind, record): kind "clean" once the clean accuracy is known (record None),
        "table" after each table, "curve" after each sweep curve."""
        if self.on_progress is not None:
            self.on_progress(self.report, kind, record)

    def job(self, label, name, options, norm, epsilon, attacked, model=None, judge=None, role=""):
        """A Job on the samples where the bool mask `attacked` holds, with the attack's own stream."""
        return Job(label, name, options, norm, epsilon, attacked.nonzero().flatten(),
                   stream_seed(self.seed, norm, epsilon, label), model or self.model, judge, role, self.context)

    def run(self, jobs_and_handlers):
        """Runs [(job, handler)] as one round; handler(outcome) gets each job's outcome, in order."""
        jobs = [job for job, _ in jobs_and_handlers]
        self.runner.run(jobs, self.images, self.labels, self.batch_size,
                        on_job=lambda i, outcome: jobs_and_handlers[i][1](outcome))

    def constant_predictor_check(self):
        return constant_predictor_check(torch.bincount(self.predicted, minlength=self.num_classes),
                                        torch.bincount(self.labels.cpu(), minlength=self.num_classes))

    def finish(self, checks):
        self.report["masking_checks"] = [check.as_json() for check in checks]
        self.report["complete"] = True
        return self.report


def attack_record(job, outcome, n, own_accuracy):
    count = int(outcome.broken.sum())
    attacked = len(job.indices)
    return {
        "label": job.label, "name": cli_name(job.label), "attack": job.name, "options": job.options,
        "attacked": attacked, "broken": count,
        # Under --worst-case-only an attack sees only what earlier ones left: no accuracy of its own.
        "robust_accuracy": (attacked - count) / n if own_accuracy else None,
        "mean_perturbation": {k: v / count for k, v in outcome.size_sums.items()} if count else None,
        "seconds": outcome.seconds,
    }


class Table:
    """One (norm, epsilon) table being filled in: each attack's record, the samples each broke, the worst
    case so far."""

    def __init__(self, norm, epsilon_label, epsilon, attacks, correct, worst_case_only):
        self.norm, self.epsilon_label, self.epsilon, self.attacks = norm, epsilon_label, epsilon, attacks
        self.order = run_order(attacks) if worst_case_only else attacks
        self.worst_case_only = worst_case_only
        self.robust, self.broken_by, self.records = correct.clone(), {}, {}

    def job(self, session, attack, model, judge, role):
        label, name, options = attack
        attacked = self.robust if self.worst_case_only else session.correct
        return session.job(label, name, options, self.norm, self.epsilon, attacked, model, judge, role)

    def add(self, job, outcome, n):
        broken = torch.zeros(n, dtype=torch.bool)
        broken[job.indices] = outcome.broken
        self.broken_by[job.label] = broken
        self.robust &= ~broken
        self.records[job.label] = attack_record(job, outcome, n, own_accuracy=not self.worst_case_only)

    def complete(self):
        return len(self.records) == len(self.attacks)

    def as_json(self, n):
        robust = int(self.robust.sum())
        return {"norm": self.norm, "epsilon": self.epsilon, "epsilon_label": self.epsilon_label,
                "attacks": [self.records[label] for label, _, _ in self.attacks], "run_order": list(self.records),
                "worst_case": {"robust": robust, "robust_accuracy": robust / n}}


def grey_image_class(model, images):
    """The class the model gives the uniform grey image, which lies within linf 0.5 of every image; -1 where
    its logits are not finite (no class: the grey image then fools every sample, as in run_unit)."""
    with torch.no_grad():
        logits = model(torch.full_like(as_float(images[:1]), 0.5))
    return logits.argmax(1).item() if torch.isfinite(logits).all() else -1


def sanity_job(session):
    """PGD at linf 0.5, and a handler that records it with the accuracy that the uniform grey image alone
    leaves: an upper bound on the true robust accuracy there, since grey lies within 0.5 of every image."""
    epsilon = parse_epsilon(SANITY["epsilon"])
    job = session.job(f"sanity {SANITY['label']}", SANITY["attack"], SANITY["options"], SANITY["norm"], epsilon,
                      session.correct)
    grey_class = grey_image_class(session.model, session.images)
    grey_survivors = session.correct & (session.labels.cpu() == grey_class)

    def record(outcome):
        session.report["sanity"] = {
            "norm": SANITY["norm"], "epsilon": epsilon, "epsilon_label": SANITY["epsilon"],
            **attack_record(job, outcome, session.n, own_accuracy=True), "label": SANITY["label"],
            "name": cli_name(SANITY["label"]), "grey_image_class": grey_class,
            "grey_image_accuracy": int(grey_survivors.sum()) / session.n}
    return job, record


def run_tables(session, plan, worst_case_only, into, model=None, judge=None, role="", extra=()):
    """Every table of the plan, appended to the report list `into` as each completes. Without
    worst_case_only every attack of every table runs in one round (with the `extra` jobs); with it, the
    k-th attacks of the tables form round k, as each sees what the earlier ones left. Returns the tables."""
    tables = [Table(norm, label, epsilon, attacks, session.correct, worst_case_only)
              for norm, label, epsilon, attacks in plan]

    def handler(table, job):
        def record(outcome):
            table.add(job, outcome, session.n)
            if table.complete():
                into.append(table.as_json(session.n))
                session.notify("table", into[-1])
        return record

    rounds = (max(len(t.order) for t in tables) if tables else 0) if worst_case_only else 1
    for k in range(rounds):
        attacks = [(t, a) for t in tables for a in (t.order[k:k + 1] if worst_case_only else t.order)]
        jobs = [(t.job(session, a, model, judge, role), t) for t, a in attacks]
        session.run([(job, handler(t, job)) for job, t in jobs] + list(extra if k == 0 else ()))
    if not rounds:
        session.run(list(extra))
    into[:] = [t.as_json(session.n) for t in tables]  # in the plan's order, whichever completed first
    return tables


@evaluates_models("model")
def evaluate(model, images, labels, dataset="cifar10", norms=None, attacks=None, epsilons=None, *,
             aa_version="standard", seed=0, batch_size=None, worst_case_only=False, progress=False,
             model_info=None, on_progress=None, runner=None):
    """Robust accuracy of `model` (any nn.Module mapping [0, 1] images to logits) under the data set's
    suite: a table per (norm, epsilon) with each attack's accuracy and the per-sample worst case, the
    large-epsilon sanity attack and the masking checks. norms/attacks (--attacks names)/epsilons narrow
    the suite (None: all of it). images: N x C x H x W, uint8 or float in [0, 1]. model_info (model, epoch,
    args, checkpoint) goes into the report; on_progress: see Session.notify; runner: a units.Runner (to
    share the work out over processes, or keep it in a store), by default one in this process. Returns
    the report; raises ValueError for bad input and ThreatModelViolation for an attack that leaves its
    threat model."""
    norms, attacks, epsilons = as_list(norms), as_list(attacks), as_list(epsilons)
    check_inputs(images, labels, dataset, batch_size)
    plan = plan_threat_models(DATASETS[dataset].family, norms, attacks, epsilons, aa_version)
    session = Session(model, images, labels, dataset, seed=seed, batch_size=batch_size, aa_version=aa_version,
                      selection={"worst_case_only": worst_case_only, "norms": norms, "attacks": attacks,
                                 "epsilons": epsilons},
                      model_info=model_info, runner=runner, progress=progress, on_progress=on_progress,
                      norm_epsilons=[(norm, label, eps) for norm, label, eps, _ in plan])
    session.notify("clean")
    tables = run_tables(session, plan, worst_case_only, session.report["threat_models"],
                        extra=[sanity_job(session)])
    report = session.report
    return session.finish([session.constant_predictor_check(),
                           *masking_checks(report["threat_models"], [t.broken_by for t in tables],
                                           report["sanity"], session.n)])


@evaluates_models("source", "target")
def evaluate_transfer(source, target, images, labels, dataset="cifar10", norms=None, attacks=None,
                      epsilons=None, *, seed=0, batch_size=None, worst_case_only=False, progress=False,
                      source_info=None, target_info=None, on_progress=None, runner=None):
    """Transfer attacks: adversarial examples made on `source` with the suite's white-box attacks, accuracy
    measured on `target` (both on the same device). Only samples the target classifies correctly are
    attacked. Returns the report, its tables under report["transfer"]["threat_models"]."""
    norms, attacks, epsilons = as_list(norms), as_list(attacks), as_list(epsilons)
    check_inputs(images, labels, dataset, batch_size)
    plan = plan_threat_models(DATASETS[dataset].family, norms, attacks, epsilons, white_box_only=True)
    session = Session(target, images, labels, dataset, seed=seed, batch_size=batch_size, aa_version=None,
                      selection={"worst_case_only": worst_case_only, "norms": norms, "attacks": attacks,
                                 "epsilons": epsilons},
                      model_info=target_info, runner=runner, progress=progress, on_progress=on_progress,
                      norm_epsilons=[(norm, label, eps) for norm, label, eps, _ in plan], source=source)
    source = source.to(session.device)
    source_info = source_info or {"model": type(source).__name__}
    digests = session.report["evaluation"]["digests"]
    if digests["source_weights"] == digests["weights"]:
        session.report["warnings"].append("the source and the target hold the same weights: these transfer "
                                          "attacks are white-box attacks on the target")
    source_correct = (clean_predictions(source, session.images, session.batch_size, session.num_classes)
                      == session.labels.cpu())
    report = session.report
    report["transfer"] = {
        "source": {"checkpoint": source_info.get("checkpoint"), "model": source_info.get("model"),
                   "epoch": source_info.get("epoch"), "clean_accuracy": int(source_correct.sum()) / session.n},
        "target": {"checkpoint": report["checkpoint"], "model": report["model"], "epoch": report["epoch"],
                   "clean_accuracy": report["clean"]["accuracy"]},
        "threat_models": []}
    session.notify("clean")
    run_tables(session, plan, worst_case_only, report["transfer"]["threat_models"], model=source, judge=target,
               role="transfer")
    return session.finish([session.constant_predictor_check()])


def grey_image_bound(model, images, labels, correct, norm, epsilons, batch_size):
    """Per epsilon, the accuracy left if every sample within epsilon of the uniform grey image were moved
    there: an upper bound on the true robust accuracy (the grey image is a valid adversarial example)."""
    grey_class = grey_image_class(model, images)
    distance = torch.cat([flat_norm(as_float(images[b:b + batch_size]) - 0.5, norm).cpu()
                          for b in range(0, len(images), batch_size)])
    keeps = correct & (labels.cpu() == grey_class)
    return [int((correct & ((distance > eps) | keeps)).sum()) / len(labels) for eps in epsilons]


@evaluates_models("model")
def evaluate_sweep(model, images, labels, dataset="cifar10", norm="linf", epsilons=(), attacks=None, *,
                   aa_version="standard", seed=0, batch_size=None, progress=False, model_info=None,
                   on_progress=None, runner=None):
    """Robust accuracy at each epsilon of `epsilons` ([(label, value)], increasing) under each selected
    attack of the norm's suite (default: its PGDs). At epsilon 0 the accuracy is the clean accuracy.
    Returns the report, the curves under report["sweep"], its checks in masking_checks."""
    attacks = as_list(attacks)
    check_inputs(images, labels, dataset, batch_size)
    sweep_attacks = plan_sweep(DATASETS[dataset].family, norm, attacks, aa_version)
    epsilons = list(epsilons)
    values = [eps for _, eps in epsilons]
    check_sweep_epsilons(values)
    session = Session(model, images, labels, dataset, seed=seed, batch_size=batch_size, aa_version=aa_version,
                      selection={"worst_case_only": False, "norms": [norm], "attacks": attacks,
                                 "epsilons": [label for label, _ in epsilons]},
                      model_info=model_info, runner=runner, progress=progress, on_progress=on_progress,
                      norm_epsilons=[(norm, label, eps) for label, eps in epsilons[-1:]])
    report = session.report
    clean_accuracy = report["clean"]["accuracy"]
    report["sweep"] = {
        "norm": norm, "epsilons": values, "epsilon_labels": [label for label, _ in epsilons],
        "clean_accuracy": clean_accuracy,
        "grey_image_bound": grey_image_bound(model, session.images, session.labels, session.correct, norm,
                                             values, session.batch_size),
        "curves": [{"label": label, "name": cli_name(label), "attack": name, "options": options,
                    "robust_accuracy": [clean_accuracy if eps == 0 else None for eps in values],
                    "seconds": [0.0 if eps == 0 else None for eps in values]}  # at 0 the ball is the image
                   for label, name, options in sweep_attacks],
        "plot": None}
    session.notify("clean")

    def record(curve, i):
        def handler(outcome):
            curve["robust_accuracy"][i] = (int(session.correct.sum()) - int(outcome.broken.sum())) / session.n
            curve["seconds"][i] = outcome.seconds
            if None not in curve["robust_accuracy"]:
                session.notify("curve", curve)
        return handler

    session.run([(session.job(curve["label"], curve["attack"], curve["options"], norm, eps, session.correct),
                  record(curve, i))
                 for curve in report["sweep"]["curves"] for i, eps in enumerate(values) if eps > 0])
    return session.finish([session.constant_predictor_check(), *sweep_checks(report["sweep"])])
