"""Counting, on any device, the operations that make the host wait for a CUDA device: on the CPU they cost
nothing, so only counting them at the dispatcher shows that an attack loop would stall a GPU at every step.

Counted: reading a value into Python (`.item()`, `bool()`/`if`, `int()`, `float()`: aten._local_scalar_dense),
the operations whose output size depends on the values (nonzero, masked_select, unique, boolean-mask indexing
and assignment), whole-tensor comparisons that return a Python bool (equal, allclose), copies from a device to
the CPU, and `.tolist()`/`.numpy()`, which read a CPU tensor without dispatching anything and are caught by
wrapping those methods while counting.
"""
from collections import Counter
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

VALUE_READS = {aten._local_scalar_dense.default, aten.equal.default, aten.allclose.default}
# Output shapes that depend on the values: the host must see them to allocate the result.
DATA_DEPENDENT_SHAPES = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                         aten.unique_dim.default, aten.unique_consecutive.default, aten.repeat_interleave.Tensor}
MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
COPIES = {aten._to_copy.default, aten.copy_.default}


def _is_mask(index):
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def _sync_kind(func, args, kwargs):
    """The kind of host sync the call is, or None."""
    if func in VALUE_READS:
        return "value read"
    if func in DATA_DEPENDENT_SHAPES:
        return func.overloadpacket.__name__
    if func in MASK_INDEXING and any(_is_mask(index) for index in args[1]):
        return "boolean-mask indexing"
    if func in COPIES:
        source = args[1] if func is aten.copy_.default else args[0]
        target = args[0].device if func is aten.copy_.default else kwargs.get("device", source.device)
        if source.device.type != "cpu" and torch.device(target).type == "cpu":
            return "copy to the CPU"
    return None


class HostSyncs(TorchDispatchMode):
    """`with HostSyncs() as syncs:` counts the host syncs in the block: syncs.total, syncs.counts by kind."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    @property
    def total(self):
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _sync_kind(func, args, kwargs)
        if kind is not None:
            self.counts[kind] += 1
        return func(*args, **kwargs)

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
