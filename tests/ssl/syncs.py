"""A guard for host syncs on the CPU: inside ``no_host_sync()`` every Python-level way of
reading a tensor's value to the host raises ``NoHostSync``. On a GPU each of them would make
the host wait for the device (``torch.cuda.set_sync_debug_mode`` is the GPU's own check; this
one runs anywhere). It sees what Python code does; a sync inside a C++ kernel (e.g. boolean
mask indexing) is caught only where listed below."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class NoHostSync(AssertionError):
    """A tensor's value was read to the host where no read may happen."""


# methods of torch.Tensor that hand a value (or a data-dependent shape) to the host
TENSOR_READS = ("item", "tolist", "numpy", "cpu", "nonzero", "masked_select", "equal",
                "allclose", "__bool__", "__float__", "__int__", "__index__", "__complex__",
                "__array__")
TORCH_READS = ("nonzero", "masked_select", "equal", "allclose", "is_nonzero")


def _raiser(name: str):
    def read(*args, **kwargs):
        raise NoHostSync(f"{name} reads a tensor's value to the host")
    return read


def _checked_getitem(original):
    def getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts):
            raise NoHostSync("indexing with a boolean mask sizes its result on the host")
        return original(self, index)
    return getitem


@contextmanager
def no_host_sync():
    saved = [(torch.Tensor, n, torch.Tensor.__dict__.get(n)) for n in TENSOR_READS]
    saved += [(torch, n, getattr(torch, n)) for n in TORCH_READS]
    getitem = torch.Tensor.__getitem__
    try:
        for owner, name, _ in saved:
            setattr(owner, name, _raiser(f"{getattr(owner, '__name__', owner)}.{name}"))
        torch.Tensor.__getitem__ = _checked_getitem(getitem)
        yield
    finally:
        torch.Tensor.__getitem__ = getitem
        for owner, name, original in saved:
            if original is None:  # inherited from torch._C.TensorBase: drop the override
                delattr(owner, name)
            else:
                setattr(owner, name, original)
