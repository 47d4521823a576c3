"""The speed options of a training run: which of them hold on a device, and the autocast of bf16 passes."""
import re
from contextlib import nullcontext

import torch


def speed_options(device, amp, channels_last, cudnn_benchmark):
    """(amp, channels_last, cudnn_benchmark): which of the speed options asked for hold on `device`.
    On CUDA all of them. On a CPU channels_last (the convolutions of oneDNN run faster on it), bf16 autocast
    only where the processor computes bf16 natively (elsewhere it is emulated, and slower than float32), and
    no cudnn."""
    if torch.device(device).type == "cuda":
        return amp, channels_last, cudnn_benchmark
    return amp and cpu_computes_bf16_natively(), channels_last, False


def cpu_computes_bf16_natively():
    """Whether this processor has bf16 arithmetic in hardware (AVX-512 BF16 or AMX), by the flags the kernel
    reports for it (Linux; False where they cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", f.read()))
    except OSError:
        return False


def mixed_precision(device_type, enabled):
    """The autocast factory of the training and validation passes: bf16 where enabled, else nothing. Casts
    of the weights are not cached: a captured CUDA graph cannot hold that cache (PyTorch's CUDA graph notes),
    and it would save one cast of the weights per forward pass only."""
    if not enabled:
        return nullcontext
    return lambda: torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=False)


CPU_COMPILE_NOTE = "--compile: on a CPU the compiled step is usually slower than the eager one; compiling as asked"


def compiled_network(model):
    """The network as --compile runs it, for the training step alone (validation runs the network itself):
    static shapes (dynamic=False), so that the epoch's shorter last batch compiles a graph of its own rather
    than turning the step's graph into dynamic-shape kernels, which a CUDA graph would then replay."""
    return torch.compile(model, dynamic=False)
