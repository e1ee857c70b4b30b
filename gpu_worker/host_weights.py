"""Moving a cached pipeline's weights between the GPU and CPU RAM (the model cache's RAM tier).

A plain `pipe.to("cpu")` puts the weights in pageable memory: the way back is a staged,
synchronous copy at a fraction of the bus's speed. Here the weights wait in one page-locked
buffer per pipeline instead (ordinary memory registered with CUDA, so it is not rounded up to a
power of two as PyTorch's pinned-memory cache would round a 2 GB block to 4 GB), and both ways
are asynchronous DMA copies on the current stream: the kernels that use the weights are queued
after them, so nothing waits on the host.

The buffer is kept for the pipeline's life in the cache and reused by each later offload; the
cache counts it as RAM and releases it first when RAM is short (`ModelCache`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch

log = logging.getLogger(__name__)

_ALIGN = 256  # bytes: every view starts where any dtype (and a vectorised copy) may start


def modules_of(pipe: Any) -> list[torch.nn.Module]:
    """The pipeline's torch modules (a bare model, a ControlNet, counts as one)."""
    if isinstance(pipe, torch.nn.Module):
        return [pipe]
    components = getattr(pipe, "components", {})
    return [c for c in components.values() if isinstance(c, torch.nn.Module)]


def _weights(pipe: Any) -> Iterator[tuple[torch.nn.Module, str, str, torch.Tensor]]:
    """(owner, "_parameters" or "_buffers", name, tensor) for every weight of the pipeline."""
    for module in modules_of(pipe):
        for owner in module.modules():
            for kind in ("_parameters", "_buffers"):
                for name, tensor in getattr(owner, kind).items():
                    if tensor is not None:
                        yield owner, kind, name, tensor


def _put(owner: torch.nn.Module, kind: str, name: str, value: torch.Tensor) -> None:
    if kind == "_parameters":
        owner._parameters[name].data = value  # type: ignore[union-attr]  # keeps the Parameter
    else:
        owner._buffers[name] = value


def _dense(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous() or (
        tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    )


def _span(tensor: torch.Tensor) -> int:
    return -(-tensor.numel() * tensor.element_size() // _ALIGN) * _ALIGN


class HostWeights:
    """One page-locked CPU buffer that holds a pipeline's weights while it waits in RAM."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.buffer = torch.empty(nbytes, dtype=torch.uint8)
        self.pinned = False
        if not torch.cuda.is_available():
            return  # a CPU-only build: plain memory (the cache only pins for a CUDA device)
        try:
            torch.cuda.check_error(
                torch.cuda.cudart().cudaHostRegister(self.buffer.data_ptr(), nbytes, 0)
            )
            self.pinned = True
        except Exception as exc:  # a locked-memory limit: still correct, only slower
            log.warning("could not pin %.1f GB of RAM for a model (%s)", nbytes / 1e9, exc)

    def view_like(self, offset: int, tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.numel() * tensor.element_size()
        flat = self.buffer[offset : offset + size].view(tensor.dtype)
        if _dense(tensor):
            return flat.as_strided(tensor.size(), tensor.stride())  # channels_last kept
        return flat.view(tensor.size())

    def release(self) -> None:
        """Unregister the buffer (after the copies queued on it); the memory itself goes when
        the last view of it does (a job may still hold the pipeline)."""
        if self.pinned:
            for index in range(torch.cuda.device_count()):  # the worker's may not be current
                torch.cuda.synchronize(index)
            torch.cuda.cudart().cudaHostUnregister(self.buffer.data_ptr())
            self.pinned = False


def host_bytes(pipe: Any) -> int:
    """The size of the buffer `to_host` needs for the pipeline."""
    seen: set[int] = set()
    total = 0
    for _owner, _kind, _name, tensor in _weights(pipe):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += _span(tensor)
    return total


def to_host(pipe: Any, host: HostWeights | None) -> HostWeights:
    """Copy the pipeline's weights into page-locked RAM (`host` reused when large enough) and
    point the modules at them. Shared tensors stay shared."""
    needed = host_bytes(pipe)
    if host is None or host.nbytes < needed:
        if host is not None:
            host.release()
        host = HostWeights(needed)
    moved: dict[int, torch.Tensor] = {}
    offset = 0
    for owner, kind, name, tensor in list(_weights(pipe)):
        if id(tensor) not in moved:
            view = host.view_like(offset, tensor)
            view.copy_(tensor, non_blocking=host.pinned)
            moved[id(tensor)] = view
            offset += _span(tensor)
        _put(owner, kind, name, moved[id(tensor)])
    return host


def to_device(pipe: Any, device: torch.device) -> None:
    """Copy the pipeline's weights to the device, asynchronously from pinned memory."""
    moved: dict[int, torch.Tensor] = {}
    for owner, kind, name, tensor in list(_weights(pipe)):
        if id(tensor) not in moved:
            moved[id(tensor)] = tensor.to(device, non_blocking=True)
        _put(owner, kind, name, moved[id(tensor)])
