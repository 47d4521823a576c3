"""Counting, on any device, the operations that make the host wait for a CUDA device: on the CPU they cost
nothing, so only counting them at the dispatcher shows that an attack loop would stall a GPU at every step.

Counted: what cuda_graph.HostReads sees at the dispatcher (reading a value into Python, the operations whose
output size depends on the values, boolean-mask indexing and assignment, copies between the device and the
CPU), and `.tolist()`/`.numpy()`, which read a CPU tensor without dispatching anything and are caught by
wrapping those methods while counting.
"""
from contextlib import contextmanager

import torch

from cuda_graph import HostReads


class HostSyncs(HostReads):
    """`with HostSyncs() as syncs:` counts the host syncs in the block: syncs.total, syncs.counts by op."""

    def __init__(self, device="cpu"):
        super().__init__(device)

    @property
    def total(self):
        return sum(self.counts.values())

    def __enter__(self):
        self._reads = _counting_python_reads(self.counts)
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._reads.__exit__(*exc)


@contextmanager
def _counting_python_reads(counts):
    """tolist and numpy read a CPU tensor's memory directly, past the dispatcher."""
    originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def counting(name):
        def read(tensor, *args, **kwargs):
            counts[name] += 1
            return originals[name](tensor, *args, **kwargs)
        return read

    for name in originals:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


class ForwardPasses:
    """Counts the calls of a module's forward: `with ForwardPasses(model) as passes: ...; passes.count`."""

    def __init__(self, model):
        self.model, self.count = model, 0

    def __enter__(self):
        self._hook = self.model.register_forward_pre_hook(self._counted)
        return self

    def _counted(self, module, inputs):
        self.count += 1

    def __exit__(self, *exc):
        self._hook.remove()
