"""The plumbing of a run over several processes (torchrun): one process per device, gloo on CPU, nccl on
CUDA. Every function is a no-op, or its single-process answer, in a run of one process."""
import os

import torch
import torch.distributed as dist


def setup_process(device):
    """(rank, world size, device), the device made current on CUDA. Under torchrun one process per device,
    gloo on CPU, nccl on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(device)
    if world_size == 1:
        return 0, 1, select_device(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size, device


def select_device(device):
    """`device`, made the current CUDA device where it names one: what runs with no device named
    (torch.cuda.graph's own capture stream, synchronize, empty_cache) runs on the current device, cuda:0
    unless it is set."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def reduce_over_processes(tensor, op=dist.ReduceOp.SUM):
    """The tensor all-reduced over the processes of the run (unchanged in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def barrier():
    if dist.is_initialized():
        dist.barrier()


def gather_over_processes(value):
    """[value of rank 0, value of rank 1, ...] (a one-element list in a single process)."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def end_processes():
    """The process group let go at the end of a run (nothing in a single process)."""
    if dist.is_initialized():
        dist.destroy_process_group()
