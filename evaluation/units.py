"""The one way an attack runs: a Job (one attack on a set of samples) cut into units of work, one batch of a
fixed size each.

A unit checks that every adversarial example it made lies in [0, 1] and inside the epsilon ball, and
records which samples it broke, how large their perturbations are and how long it took. It draws its
randomness from its own stream, seeded from the job's stream and the batch's position, so that its outcome
does not depend on which process runs it or on what ran before. That is what lets a Runner share units out
over the processes of torch.distributed, and keep finished ones in a UnitStore (store.py), from which a
killed evaluation continues.
"""
import functools
import hashlib
import inspect
import itertools
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from attacks import ATTACKS
from attacks.common import NORMS, flat_norm
from utils import percent, progress_meter

from .suite import gradient_steps, is_autoattack

TOLERANCE = 1e-5  # float32 slack, absolute and relative, when checking that x_adv is in the threat model


def as_float(images):
    """Float images in [0, 1], whether stored as uint8 or float: always a new tensor, so that a model that
    writes into its input never reaches the caller's images."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.to(torch.float32, copy=True)


def check_model(model):
    """Raises TypeError for what the attacks cannot work on: not an nn.Module, or weights that are not
    float32 (the attacks' images are float32; a bf16 model fails deep inside the first attack)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"the model must be a torch.nn.Module, not {type(model).__name__}")
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    if dtypes - {torch.float32}:
        raise TypeError(f"the model's weights are {', '.join(sorted(str(d) for d in dtypes))}: the attacks "
                        f"work in float32, so pass model.float() (autocast inside its forward is fine)")


@contextmanager
def in_eval_mode(models):
    """The models in eval mode while the block runs, and each module's own mode restored afterwards: the
    caller's model comes back as it was given."""
    modes = [(module, module.training) for model in models for module in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:  # parents first: a child's own mode is set after its parent's
            module.train(training)


def evaluates_models(*names):
    """An entry point whose model arguments `names` are checked (check_model) and evaluated in eval mode."""
    def decorate(entry_point):
        signature = inspect.signature(entry_point)

        @functools.wraps(entry_point)
        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs).arguments
            models = [bound[name] for name in names]
            for model in models:
                check_model(model)
            with in_eval_mode(models):
                return entry_point(*args, **kwargs)
        return run
    return decorate


def not_classified(logits):
    """Samples whose logits are not all finite: argmax would give them class 0, and a sample of class 0
    would count as correct, and as unbreakable, however broken the model is."""
    return ~torch.isfinite(logits).all(1)


def clean_predictions(model, images, batch_size, num_classes=None):
    """The model's class for each image (on the CPU): computed once, shared by every attack. Raises
    ValueError for logits that are not one finite score per class (num_classes, when given)."""
    predicted, not_finite = [], 0
    with torch.no_grad():
        for begin in range(0, len(images), batch_size):
            logits = model(as_float(images[begin:begin + batch_size]))
            if not isinstance(logits, torch.Tensor):
                raise ValueError(f"the model returns a {type(logits).__name__}, not a tensor of logits: evaluate "
                                 f"a module whose forward returns the logits alone")
            if num_classes is not None and (logits.dim() != 2 or logits.shape[1] != num_classes):
                raise ValueError(f"the model gives logits of shape {tuple(logits.shape)} per batch, "
                                 f"{logits.shape[-1]} per image, but the data set has {num_classes} classes")
            not_finite += int(not_classified(logits).sum())
            predicted.append(logits.argmax(1).cpu())
    if not_finite:
        raise ValueError(f"the model's logits are not finite (NaN or inf) for {not_finite} of {len(images)} "
                         f"images: check its weights and its forward")
    return torch.cat(predicted)


# --- random streams ------------------------------------------------------------------------------------------

def stream_seed(seed, norm, epsilon, label, batch=None):
    """A seed from (seed, norm, epsilon, attack) alone, and the batch's position when given. The epsilon's
    value (not its written form) counts, so 8/255 and 0.0313725... share a stream."""
    key = f"{seed}|{norm}|{float(epsilon)!r}|{label}" + ("" if batch is None else f"|{batch}")
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % 2 ** 63


@contextmanager
def random_stream(seed, device):
    """torch's global generators seeded with `seed`, and restored afterwards: attacks draw from them."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# --- one unit ------------------------------------------------------------------------------------------------

class ThreatModelViolation(Exception):
    """An attack returned an image outside [0, 1] or outside its epsilon ball: a bug in the attack."""


def check_in_threat_model(label, x, x_adv, norm, epsilon):
    """Every returned example (not only the successful ones: any is a contract breach) must be a valid
    image within epsilon of its original in the threat model's norm."""
    if x_adv.shape != x.shape:
        raise ThreatModelViolation(f"{label} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise ThreatModelViolation(f"{label} returned non-finite pixels")
    low, high = x_adv.min().item(), x_adv.max().item()
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        raise ThreatModelViolation(f"{label} returned pixels outside [0, 1] (from {low:.6g} to {high:.6g})")
    sizes = flat_norm(x_adv.double() - x.double(), norm)
    limit = epsilon * (1 + TOLERANCE) + TOLERANCE
    outside = sizes > limit
    if outside.any():
        raise ThreatModelViolation(
            f"{label} left the {norm} ball of radius {epsilon:.6g} on {int(outside.sum())} of {len(x)} "
            f"samples (largest perturbation {sizes.max().item():.6g})")


def build_attack(name, epsilon, options, seed):
    """The registry's attack; AutoAttack seeds its own generators, so it gets the stream's seed."""
    return ATTACKS[name](epsilon, **options, **({"seed": seed} if is_autoattack(name) else {}))


@dataclass(eq=False)
class Job:
    """One attack on the samples at `indices` (a CPU tensor, in order): a column of a table, the sanity
    attack or a point of a sweep. The attack works on `model`; `judge` (default: the model) decides which
    adversarial examples fool it, as in a transfer attack. `seed` seeds the job's stream."""
    label: str
    name: str
    options: dict
    norm: str
    epsilon: float
    indices: torch.Tensor
    seed: int
    model: torch.nn.Module
    judge: torch.nn.Module = None
    role: str = ""  # tells apart jobs that share everything else (a table's column and a transfer's)
    context: str = ""  # unit_context: the weights, images and device the job's outcome belongs to

    def units(self, batch_size):
        return math.ceil(len(self.indices) / batch_size)

    def samples(self, batch_size, position):
        return self.indices[position * batch_size:(position + 1) * batch_size]

    def key(self, batch_size, position):
        """What fixes a unit's outcome: its name in a UnitStore."""
        return json.dumps([self.context, self.role, self.label, self.name, self.options, self.norm,
                           float(self.epsilon), self.seed, batch_size, position], sort_keys=True)


def run_unit(job, position, images, labels, batch_size):
    """One batch of a job: {"indices", "broken" (per sample), "sizes" ([linf, l2, l1] of each broken
    sample's perturbation), "seconds"}, plain Python values (JSON and pickle alike)."""
    index = job.samples(batch_size, position)
    seed = stream_seed(job.seed, job.norm, job.epsilon, job.label, batch=position)
    attack = build_attack(job.name, job.epsilon, job.options, seed)
    with random_stream(seed, images.device):
        start = time.perf_counter()
        on_device = index.to(images.device)
        x, y = as_float(images[on_device]), labels[on_device]
        x_adv = attack(job.model, x, y)
        check_in_threat_model(job.label, x, x_adv, job.norm, job.epsilon)
        with torch.no_grad():
            logits = (job.judge or job.model)(x_adv)
            fooled = (logits.argmax(1) != y) | not_classified(logits)
        delta = (x_adv - x)[fooled].double()
        sizes = torch.stack([flat_norm(delta, norm) for norm in NORMS], dim=1).tolist() if len(delta) else []
        fooled = fooled.tolist()  # waits for the device: timing is honest
        seconds = time.perf_counter() - start
    return {"indices": index.tolist(), "broken": fooled, "sizes": sizes, "seconds": seconds}


@dataclass
class Outcome:
    """A job's result: which of its samples it broke, the summed linf, l2 and l1 sizes of those
    perturbations, and the seconds its units took (summed over processes and over resumed runs)."""
    broken: torch.Tensor
    size_sums: dict
    seconds: float


def combine(units):
    broken = torch.tensor([b for unit in units for b in unit["broken"]], dtype=torch.bool)
    sizes = [size for unit in units for size in unit["sizes"]]
    size_sums = {norm: sum(size[k] for size in sizes) for k, norm in enumerate(NORMS)}  # in sample order
    return Outcome(broken, size_sums, sum(unit["seconds"] for unit in units))


UNITS_PER_JOB = 10  # at least, for a job of that many samples


def unit_size(width, samples):
    """The images per unit of a job on `samples` images: at most `width` (the images per attack call, for
    throughput), and at most a tenth of the job, so that the time estimate (after the first unit of every
    job) comes after about a tenth of the work, a progress bar moves about ten times per attack, and a kill
    loses at most about a tenth of an attack. Not the number of processes: a unit's random stream follows
    from its position, so the same units under torchrun give the figures of one process."""
    return max(1, min(width, math.ceil(samples / UNITS_PER_JOB)))


# --- units shared out over processes -------------------------------------------------------------------------

def shared(value, world_size):
    """Rank 0's value, in every process of torch.distributed (with world_size > 1): a point every process
    reaches before any goes on."""
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# A round whose first units (one per job) still run this many seconds after it started gets an early estimate,
# an upper bound, so that a round of slow attacks (C&W, AutoAttack on robust samples) is not silent for minutes.
EARLY_ESTIMATE_SECONDS = 30


class Runner:
    """Runs jobs unit by unit: in this process, or, with world_size > 1 (torch.distributed initialised),
    the units not yet in the store dealt out over the processes and the outcomes gathered, so that every
    process returns the same outcomes as one process alone would. progress: a bar per job. on_estimate
    (seconds, upper_bound=False): called in rank 0 once the first unit of every job has run, with the time
    the rest of the round should take, measured on those units (not called where nothing is left); and
    before that, once, where those first units are still running EARLY_ESTIMATE_SECONDS into the round,
    with an upper bound (upper_bound=True). clock: seconds, for that wait."""

    def __init__(self, store=None, rank=0, world_size=1, progress=False, on_estimate=None, clock=time.monotonic):
        self.store, self.rank, self.world_size, self.progress = store, rank, world_size, progress
        self.on_estimate, self.clock = on_estimate, clock
        if store is not None:
            store.outcomes = self.shared(store.outcomes)  # what rank 0 read: every process deals the same

    def shared(self, value):
        return shared(value, self.world_size)

    def deal(self, todo):
        """(this process's first units, the rest of its units): each process takes one of the first units
        of every job, so that every job's cost is measured early (in rank 0 above all, which estimates);
        the rest are dealt out in turn."""
        first = {}
        for j, p in todo:
            first.setdefault(j, [])
            if len(first[j]) < self.world_size:
                first[j].append((j, p))
        mine_first = [units[self.rank] for units in first.values() if self.rank < len(units)]
        taken = {u for units in first.values() for u in units}
        rest = [u for u in todo if u not in taken]
        return mine_first, rest[self.rank::self.world_size], rest

    def run(self, jobs, images, labels, batch_size, on_job=None):
        """[Outcome per job]. on_job(i, outcome) is called for each job in order, as soon as its units
        are done (under torch.distributed: once all processes are). `batch_size` is the widest unit (the
        images per attack call); each job's units are at most a tenth of it (unit_size)."""
        sizes = [unit_size(batch_size, len(job.indices)) for job in jobs]
        units = [(j, p) for j, job in enumerate(jobs) for p in range(job.units(sizes[j]))]
        done = {}
        for j, p in units:
            stored = self.store and self.store.get(jobs[j].key(sizes[j], p), jobs[j].samples(sizes[j], p).tolist())
            if stored:
                done[j, p] = stored
        mine_first, mine_rest, rest = self.deal([u for u in units if u not in done])
        mine = mine_first + mine_rest
        announced = 0

        def outcome(j):
            return combine([done[j, p] for p in range(jobs[j].units(sizes[j]))])

        def announce():
            nonlocal announced
            while announced < len(jobs) and all((announced, p) in done
                                                for p in range(jobs[announced].units(sizes[announced]))):
                if on_job:
                    on_job(announced, outcome(announced))
                announced += 1

        def size(unit):
            return len(jobs[unit[0]].samples(sizes[unit[0]], unit[1]))

        def estimate():
            if rest and self.rank == 0 and self.on_estimate:
                self.on_estimate(self.seconds_left(rest, done, size))

        started, early = self.clock(), [self.rank != 0 or not self.on_estimate]

        def early_estimate(left):
            if early[0] or self.clock() - started < EARLY_ESTIMATE_SECONDS:
                return
            seconds = self.seconds_at_most(jobs, left, done, size)
            if seconds is not None:
                early[0] = True
                self.on_estimate(seconds, upper_bound=True)

        if not mine_first:  # every job's first units were kept from an earlier run
            estimate()
        bar = None
        for k, (j, p) in enumerate(mine):
            if self.world_size == 1:
                announce()
            if bar is None or bar.job is not jobs[j]:
                following = [size(u) for u in itertools.takewhile(lambda u: u[0] == j, mine[k:])]
                bar = JobBar(jobs[j], following, len(labels), self.progress and self.rank == 0, previous=bar)
            done[j, p] = run_unit(jobs[j], p, images, labels, sizes[j])
            if self.store is not None:
                self.store.put(jobs[j].key(sizes[j], p), done[j, p])
            bar.update(done[j, p]["broken"])
            if k + 1 == len(mine_first):
                bar.close()  # the estimate's line, printed under a finished bar
                bar = None
                estimate()
            elif k + 1 < len(mine_first):
                early_estimate([u for u in units if u not in done])
        if bar is not None:
            bar.close()
        if self.world_size > 1:
            gathered = [None] * self.world_size
            dist.all_gather_object(gathered, {u: done[u] for u in mine})
            for outcomes in gathered:
                for (j, p), unit in outcomes.items():
                    done[j, p] = unit
                    if self.store is not None:
                        self.store.put(jobs[j].key(sizes[j], p), unit, write=False)
        announce()
        return [outcome(j) for j in range(len(jobs))]

    def seconds_at_most(self, jobs, left, done, size):
        """Before every job has been timed: the wall time the units `left` should take at most, the timed
        jobs at their seconds per sample, the others at their gradient steps per sample (evaluation.suite's
        count for a sample that resists to the end) times the seconds per image and step measured so far.
        None before any unit has run."""
        spent, seen = {}, {}
        for (j, p), outcome in done.items():
            spent[j] = spent.get(j, 0.0) + outcome["seconds"]
            seen[j] = seen.get(j, 0) + len(outcome["indices"])
        steps = {j: gradient_steps((job.label, job.name, job.options)) for j, job in enumerate(jobs)}
        timed_steps = sum(steps[j] * seen[j] for j in seen)
        if not timed_steps:
            return None
        per_step = sum(spent.values()) / timed_steps
        return sum(spent[j] / seen[j] * size((j, p)) if seen.get(j) else per_step * steps[j] * size((j, p))
                   for j, p in left) / self.world_size

    def seconds_left(self, rest, done, size):
        """The wall time the units `rest` should take over the processes: each job's seconds per sample in
        the units of it done so far (here, or kept from an earlier run) times its samples still to attack."""
        spent, seen = {}, {}
        for (j, p), outcome in done.items():
            spent[j] = spent.get(j, 0.0) + outcome["seconds"]
            seen[j] = seen.get(j, 0) + len(outcome["indices"])
        return sum(spent[j] / seen[j] * size((j, p)) for j, p in rest if seen.get(j)) / self.world_size


class JobBar:
    """A progress bar over this process's units of one job. Its running survival rate times the share of
    all n samples that the job attacks estimates the final accuracy."""

    def __init__(self, job, unit_sizes, n, enabled, previous=None):
        if previous is not None:
            previous.close()
        self.job, self.share, self.broken, self.seen = job, len(job.indices) / n, 0, 0
        self.bar = progress_meter(sum(unit_sizes), f"{job.label} ({job.norm} {job.epsilon:.4g})", enabled, unit="img")

    def update(self, broken):
        self.broken, self.seen = self.broken + sum(broken), self.seen + len(broken)
        self.bar.update(len(broken))
        self.bar.set_postfix(robust=percent(self.share * (1 - self.broken / self.seen)))

    def close(self):
        self.bar.close()
