"""Speed of ALP training and of the evaluation attacks, on whatever device is present.

    python bench.py                      # everything; table on stdout, figures in bench.json
    python bench.py --skip-attacks       # training only
    python bench.py --attacks fgsm pgd-10 --attack-batch 256
    python bench.py --skip-attacks --configs "mnist/mnist b50 PGD-40" --steps 2 --repeats 1   # a quick check

Inputs are synthetic tensors of the real shapes (timings do not depend on pixel values, except for attacks
that stop early: see the note printed with the attack table). Every figure is the median of --repeats
timed runs after an untimed warm-up.

Training: images/s and projected seconds per epoch (50,000 CIFAR / 60,000 MNIST training images) of one ALP
iteration (PGD pair + two forward passes + one backward). On CPU it is also timed with a PGD that calls
loss.backward() at every attack step, as the reference implementation does, to show what input-only
gradients save. On CUDA it is timed with and without the speed options (bf16 autocast, channels_last,
cudnn.benchmark), each as one CUDA graph replay per iteration (cuda_graph.GraphedStep, what ALP.py runs on
CUDA) and as the eager step; with the options also with the network compiled (torch.compile, default mode)
inside the graph, and with --compile also compiled without the graph. The output names the GPU.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from collections import namedtuple

import torch
import torch.nn.functional as F

from attacks import ATTACKS
from attacks.common import clip_to_ball
from data import DATASETS
from evaluation import SUITES, attack_names, cli_name, parse_epsilon
from cuda_graph import GraphedStep
from training import cpu_computes_bf16_natively, mixed_precision, train_step
from training.processes import select_device
from training.speed import CPU_COMPILE_NOTE, compiled_network
from optimization import OPTIMIZERS
from interrupts import Interrupted, interruptible
from utils import CLIParser, default_device, write_atomically
from weights import build_model

# name -> (model, data set, batch size, PGD steps, epsilon, step size): the reference configurations.
TRAINING_CONFIGS = {
    "resnet32/cifar10 b128 PGD-10": ("resnet32", "cifar10", 128, 10, 8 / 255, 2 / 255),
    "resnet18/cifar10 b128 PGD-10": ("resnet18", "cifar10", 128, 10, 8 / 255, 2 / 255),
    "mnist/mnist b50 PGD-40": ("mnist", "mnist", 50, 40, 0.3, 0.01),
}
EPOCH_IMAGES = {"cifar10": 50_000, "mnist": 60_000}
ATTACK_MODELS = {"cifar": ("resnet32", "cifar10"), "mnist": ("mnist", "mnist")}


class BackwardEveryStepPGD:
    """Baseline only: linf PGD as the reference writes it, loss.backward() through a model whose parameters
    still require gradients, so every attack step also computes (and discards) weight gradients."""

    def __init__(self, epsilon, steps, stepsize):
        self.epsilon, self.steps, self.stepsize = epsilon, steps, stepsize

    def __call__(self, model, x, y):
        model.eval()
        x_adv = (x + torch.empty_like(x).uniform_(-self.epsilon, self.epsilon)).clamp(0, 1)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            model.zero_grad()
            F.cross_entropy(model(x_adv), y).backward()
            x_adv = x_adv + self.stepsize * x_adv.grad.sign()
            x_adv = (x + clip_to_ball(x_adv - x, self.epsilon, "linf")).clamp(0, 1)
        model.train()
        return x_adv.detach()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeats, warmup=1):
    """Median wall time of fn() over `repeats` runs, after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_batch(spec, n, device, channels_last=False):
    x = torch.rand(n, *spec.shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, spec.num_classes, (n,), device=device)


# How one training figure is taken. amp: bf16 autocast; graph: one CUDA graph replay per iteration;
# baseline: the reference's backward-every-step PGD instead of ours.
Variant = namedtuple("Variant", "label amp channels_last compile graph baseline")
CPU_VARIANTS = [Variant("float32, input-grad PGD", False, False, False, False, False),
                Variant("float32, backward-every-step PGD", False, False, False, False, True),
                Variant("float32 + channels_last", False, True, False, False, False)]
CPU_BF16_VARIANTS = [Variant("bf16", True, False, False, False, False),  # where the CPU has bf16 arithmetic
                     Variant("bf16 + channels_last", True, True, False, False, False)]
CUDA_VARIANTS = [Variant("bf16+channels_last+cudnn.benchmark, compiled + graph", True, True, True, True, False),
                 Variant("bf16+channels_last+cudnn.benchmark, graph", True, True, False, True, False),
                 Variant("bf16+channels_last+cudnn.benchmark, eager", True, True, False, False, False),
                 Variant("float32, no options, graph", False, False, False, True, False),
                 Variant("float32, no options, eager", False, False, False, False, False)]
COMPILE_VARIANT = Variant("bf16+channels_last+cudnn.benchmark + torch.compile", True, True, True, False, False)


def time_training(config, device, repeats, iterations, variant, steps=None):
    """(seconds per ALP iteration, the median over repeats of `iterations` iterations each; why the graph
    variant did not time what its label says, or None). `steps` replaces the configuration's PGD steps. After
    a failed recording the graph variant times the eager step, after a failed compilation the uncompiled
    network: its row must say so."""
    model_name, dataset, batch_size, config_steps, epsilon, stepsize = TRAINING_CONFIGS[config]
    steps = steps or config_steps
    spec = DATASETS[dataset]
    torch.manual_seed(0)
    model = build_model(model_name, dataset).to(device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if variant.compile:
        torch._dynamo.reset()  # each figure compiles afresh: earlier networks count against dynamo's cache limit
    net = compiled_network(model) if variant.compile else model  # as ALP.py compiles it
    optimizer = OPTIMIZERS["sgd"](model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4,
                                  fused=variant.graph)
    attack = (BackwardEveryStepPGD(epsilon, steps, stepsize) if variant.baseline
              else ATTACKS["pgd-linf"](epsilon, steps=steps, stepsize=stepsize))
    autocast = mixed_precision(device.type, variant.amp)
    x, y = synthetic_batch(spec, batch_size, device, variant.channels_last)

    def iteration(train_model, attack_model, x, y):  # ALP.py's iteration, at its default loss weights
        return train_step(train_model, attack_model, attack, optimizer, x, y, 0.5, autocast)
    if variant.graph:
        step = GraphedStep(iteration, net, net, optimizer, autocast, batch_size)
        for _ in range(GraphedStep.UNTIMED):  # the warm-ups (compilation included) and the capture
            step(x, y)
    else:
        def step(x, y):
            return iteration(net, net, x, y)

    def iterate():
        for _ in range(iterations):
            step(x, y)

    seconds = median_seconds(iterate, device, repeats, warmup=2 if variant.compile else 1) / iterations
    if not variant.graph:
        return seconds, None, None
    return seconds, step.capture_failure, step.compile_failure


def ran_config(config, steps=None):
    """A configuration's name as it ran: with --steps, the PGD steps it names are the ones that ran, so that
    neither its row nor its projected epoch reads as the reference configuration's."""
    model_name, dataset, batch_size, config_steps, *_ = TRAINING_CONFIGS[config]
    return config if not steps or steps == config_steps else f"{model_name}/{dataset} b{batch_size} PGD-{steps}"


def bench_training(args, device, rows, save):
    """Appends a row to `rows` per figure and calls save() after each, so a run stopped early keeps what it
    timed."""
    cuda = device.type == "cuda"
    variants = CPU_VARIANTS + (CPU_BF16_VARIANTS if cpu_computes_bf16_natively() else [])
    if cuda:
        variants = CUDA_VARIANTS + ([COMPILE_VARIANT] if args.compile else [])
    for config in args.configs:
        model_name, dataset, batch_size, steps, *_ = TRAINING_CONFIGS[config]
        for variant in variants:
            torch.backends.cudnn.benchmark = cuda and variant.channels_last
            seconds, capture_failure, compile_failure = time_training(config, device, args.repeats,
                                                                      args.iterations, variant, args.steps)
            rows.append({"config": ran_config(config, args.steps), "variant": variant.label,
                         "pgd_steps": args.steps or steps,
                         "capture_failure": capture_failure, "compile_failure": compile_failure,
                         "seconds_per_iteration": seconds,
                         "images_per_second": batch_size / seconds,
                         "seconds_per_epoch": EPOCH_IMAGES[dataset] / batch_size * seconds})
            save()
            print(f"  {ran_config(config, args.steps):30s} {variant.label:52s} {seconds:8.4f} s/it "
                  f"{batch_size / seconds:9.1f} img/s "
                  f"{rows[-1]['seconds_per_epoch']:9.1f} s/epoch"
                  + (f" (recording failed, eager step timed: {capture_failure})" if capture_failure else "")
                  + (f" (compiling failed, the graph ran uncompiled: {compile_failure})" if compile_failure else ""),
                  flush=True)


def bench_attacks(args, device):
    rows = []
    for family in args.families:
        model_name, dataset = ATTACK_MODELS[family]
        spec = DATASETS[dataset]
        torch.manual_seed(0)
        model = build_model(model_name, dataset).to(device).eval()
        for p in model.parameters():  # the MNIST net's head starts at zero: all logits tie, which breaks
            if not p.any():           # pyautoattack's Square; a trained model has no such ties
                torch.nn.init.normal_(p, std=0.01)
        x, y = synthetic_batch(spec, args.attack_batch, device)
        ATTACKS["pgd-linf"](0.01, steps=2, stepsize=0.005)(model, x, y)  # one-time start-up costs, untimed
        for norm, suite in SUITES[family].items():
            epsilon = parse_epsilon(suite["epsilons"][0])
            for label, name, options in suite["attacks"]:
                if args.attacks and cli_name(label) not in args.attacks:
                    continue
                attack = ATTACKS[name](epsilon, **options)
                seconds = median_seconds(lambda: attack(model, x, y), device, args.attack_repeats, warmup=0)
                rows.append({"family": family, "model": model_name, "norm": norm, "epsilon": suite["epsilons"][0],
                             "attack": label, "images_per_second": args.attack_batch / seconds,
                             "seconds": seconds, "batch": args.attack_batch})
                print(f"  {model_name:9s} {norm:4s} eps {suite['epsilons'][0]:7s} {label:9s} "
                      f"{args.attack_batch / seconds:9.1f} img/s", flush=True)
    return rows


def run_benchmarks(args, device, results, save):
    """The training figures, then the attacks', into results (save() writes what there is)."""
    if not args.skip_training:
        print("ALP training, one iteration = PGD pair + 2 forward passes + 1 backward:")
        bench_training(args, device, results["training"], save)
        seconds = {(r["config"], r["variant"]): r["seconds_per_iteration"] for r in results["training"]}
        for config in (ran_config(c, args.steps) for c in args.configs):
            if device.type == "cpu":
                ours, baseline = (seconds[config, v.label] for v in CPU_VARIANTS[:2])
                fastest = min(s for (c, label), s in seconds.items() if c == config and "backward-every" not in label)
                print(f"  {config}: input-grad PGD is {baseline / ours:.2f}x faster than backward-every-step; the "
                      f"fastest options {ours / fastest:.2f}x faster than plain float32")
            else:
                compiled, graph, eager = (seconds[config, v.label] for v in CUDA_VARIANTS[:3])
                print(f"  {config}: the CUDA graph is {eager / graph:.2f}x faster than the eager step, "
                      f"{eager / compiled:.2f}x with the network compiled (bf16 options)")
    if not args.skip_attacks:
        print(f"attacks on an untrained model, synthetic batch of {args.attack_batch} (minimisation attacks, "
              f"DeepFool and C&W, stop early when every sample is broken: their speed depends on the model):")
        results["attacks"] = bench_attacks(args, device)


def main(argv=None):
    p = CLIParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", choices=TRAINING_CONFIGS, default=list(TRAINING_CONFIGS),
                   metavar="CONFIG", help=f"training configurations: {', '.join(TRAINING_CONFIGS)}")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per training figure")
    p.add_argument("--iterations", type=int, default=2, help="ALP iterations per timed repeat")
    p.add_argument("--steps", type=int, help="PGD steps instead of each configuration's (quick checks)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA)")
    p.add_argument("--skip-attacks", action="store_true")
    p.add_argument("--families", nargs="+", choices=SUITES, default=list(SUITES))
    p.add_argument("--attacks", nargs="+", choices=attack_names(), metavar="ATTACK",
                   help=f"only these attack columns: {', '.join(attack_names())}")
    p.add_argument("--attack-batch", type=int, default=None, help="images per attack call (CPU 32, CUDA 1000)")
    p.add_argument("--attack-repeats", type=int, default=1)
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default="bench.json")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be positive, not {args.steps}")
    device = select_device(args.device or default_device())
    if args.compile and device.type != "cuda":
        print(f"bench.py: {CPU_COMPILE_NOTE.split(';')[0]}, and bench.py times it on CUDA only: nothing compiled here")
    if args.attack_batch is None:
        args.attack_batch = 1000 if device.type == "cuda" else 32
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {device} ({machine}); torch {torch.__version__}")

    results = {"device": str(device), "machine": machine, "torch": torch.__version__, "training": [], "attacks": []}

    def save():  # whole or not at all: the acceptance run reads it after stopping bench.py at its deadline
        write_atomically(args.json, json.dumps(results, indent=2))
    try:
        with interruptible():
            run_benchmarks(args, device, results, save)
    except Interrupted as stop:
        save()
        print(f"stopped by {stop}; the figures measured so far are in {args.json}")
        sys.exit(stop.exit_status)
    save()
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
