"""A guard for code that must run on any device, checked on a CPU-only machine.

`.numpy()` works only on a host tensor: on CUDA (or any other device) it raises, so every call must be
written `t.cpu().numpy()` (free on a CPU, a copy elsewhere). On a CPU-only machine every tensor is a host
tensor and a missing `.cpu()` goes unnoticed; under this guard `.numpy()` is refused on any tensor that did
not come straight from `.cpu()`, which makes the missing copy fail here as it would on a GPU. The guard
patches the methods (not a `TorchFunctionMode`, which is per thread) so that it also covers the
scheduler's loop thread. `.tolist()`, `.item()` and `int(t)` are not guarded: they copy to the host on
every device (a synchronisation on a GPU, not a failure).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

_ON_HOST = "_hirpf_from_cpu"


@contextmanager
def numpy_only_after_cpu(monkeypatch):
    """Within the block, `t.numpy()` raises unless `t` is the result of `.cpu()`."""
    plain_cpu, plain_numpy = torch.Tensor.cpu, torch.Tensor.numpy

    def cpu(self, *args, **kwargs):
        moved = plain_cpu(self, *args, **kwargs)
        if moved is self:
            moved = moved.clone()  # a device tensor's .cpu() is a new tensor: the original stays unmarked
        setattr(moved, _ON_HOST, True)
        return moved

    def numpy(self, *args, **kwargs):
        if not getattr(self, _ON_HOST, False):
            raise AssertionError("numpy() of a tensor that may live on the model's device: call .cpu() first")
        return plain_numpy(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "cpu", cpu)
        patch.setattr(torch.Tensor, "numpy", numpy)
        yield
