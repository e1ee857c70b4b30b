"""An LRU cache of loaded pipelines and ControlNets with a device-memory budget and a second tier
in CPU RAM.

On a CUDA device the RAM tier is page-locked memory (`host_weights`), so a model comes back at
the bus's full speed, asynchronously; `pin_ram_tier=False` keeps the plain `.to("cpu")`.

Passed around as an object (never module state). Each entry's cost is counted explicitly from
its tensors. When the device budget is exceeded, the least recently used entries move to CPU
RAM (a fast move back later); when RAM is exceeded too, they are dropped.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from gpu_worker.host_weights import HostWeights, to_device, to_host


def pipeline_bytes(pipe: Any) -> int:
    """Bytes held by the pipeline's parameters and buffers (shared tensors counted once); a
    bare model (a ControlNet) counts as a pipeline of one component."""
    seen: set[int] = set()
    total = 0
    components = {"model": pipe} if isinstance(pipe, torch.nn.Module) else {}
    for component in getattr(pipe, "components", components).values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in [*component.parameters(), *component.buffers()]:
            key = tensor.data_ptr()
            if key in seen:
                continue
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class CacheEntry:
    key: Hashable
    pipe: Any
    size_bytes: int
    on_device: bool
    loaded_at: float = field(default_factory=time.monotonic)
    uses: int = 0
    host: HostWeights | None = None  # its page-locked RAM copy, kept for the next offload

    def release_host(self) -> None:
        if self.host is not None:
            self.host.release()
            self.host = None


@dataclass
class CacheStats:
    hits: int = 0
    moves_to_device: int = 0
    loads: int = 0
    offloads: int = 0
    drops: int = 0


class ModelCache:
    def __init__(
        self,
        *,
        device: torch.device | str,
        device_budget_bytes: int,
        ram_budget_bytes: int,
        pin_ram_tier: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.pin_ram_tier = pin_ram_tier and self.device.type == "cuda"
        self.device_budget_bytes = device_budget_bytes
        self.ram_budget_bytes = ram_budget_bytes
        self._entries: OrderedDict[Hashable, CacheEntry] = OrderedDict()  # oldest first
        self._lock = threading.RLock()  # the heartbeat thread reads while a job runs
        self.stats = CacheStats()

    # --- reading ---------------------------------------------------------------------------
    def keys_hottest_first(self) -> list[Hashable]:
        with self._lock:
            return list(reversed(self._entries))

    def device_bytes(self) -> int:
        with self._lock:
            return sum(e.size_bytes for e in self._entries.values() if e.on_device)

    def ram_bytes(self) -> int:
        with self._lock:
            return sum(
                (e.host.nbytes if e.host is not None else 0) if e.on_device else e.size_bytes
                for e in self._entries.values()
            )

    def entry(self, key: Hashable) -> CacheEntry | None:
        with self._lock:
            return self._entries.get(key)

    # --- using -----------------------------------------------------------------------------
    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        """The pipeline for key on the device: a hit, a move from RAM, or `load()` (on CPU)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.uses += 1
                if entry.on_device:
                    self.stats.hits += 1
                    return entry.pipe
                self._make_room(entry.size_bytes, keep=key)
                if self.device.type != "cpu":  # on a CPU device both tiers are the same RAM
                    self._move_in(entry)
                entry.on_device = True
                self._release_kept_buffers(self.ram_bytes())  # its own buffer now counts
                self.stats.moves_to_device += 1
                return entry.pipe
        pipe = load()  # outside the lock: loading takes seconds
        size = pipeline_bytes(pipe)
        with self._lock:
            self._make_room(size, keep=key)
            pipe.to(self.device)
            self._entries[key] = CacheEntry(key=key, pipe=pipe, size_bytes=size, on_device=True)
            self._entries[key].uses = 1
            self.stats.loads += 1
        return pipe

    def clear(self) -> None:
        """Drop everything (after an out-of-memory error) and give the memory back."""
        with self._lock:
            for key in list(self._entries):
                self._drop(key)
        release_memory(self.device)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            if key in self._entries:
                self._drop(key)

    def discard_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop the entries whose key matches (an operator's "unload"); a job using one keeps
        its reference until it ends."""
        with self._lock:
            keys = [k for k in self._entries if predicate(k)]
            for key in keys:
                self._drop(key)
        if keys:
            release_memory(self.device)
        return len(keys)

    # --- eviction --------------------------------------------------------------------------
    def _make_room(self, incoming: int, *, keep: Hashable) -> None:
        on_device = [k for k, e in self._entries.items() if e.on_device and k != keep]
        used = sum(self._entries[k].size_bytes for k in on_device)
        for k in on_device:  # oldest first
            if used + incoming <= self.device_budget_bytes:
                break
            entry = self._entries[k]
            if self.device.type != "cpu":
                self._move_out(entry)
            entry.on_device = False
            used -= entry.size_bytes
            self.stats.offloads += 1
        in_ram = [k for k, e in self._entries.items() if not e.on_device and k != keep]
        ram = sum(self._entries[k].size_bytes for k in in_ram)
        if self.device.type == "cpu":
            ram += used + incoming  # on a CPU device both tiers share the same RAM
        # page-locked copies kept for models on the device count as RAM and go first when it
        # is short (only a later offload gets slower), then whole models in RAM, oldest first
        ram = self._release_kept_buffers(ram + self._kept_buffer_bytes())
        dropped = False
        for k in in_ram:
            if ram <= self.ram_budget_bytes:
                break
            ram -= self._entries[k].size_bytes
            self._drop(k)
            self.stats.drops += 1
            dropped = True
        if dropped or (self.device.type == "cuda" and used + incoming > self.device_budget_bytes):
            release_memory(self.device)  # gc.collect costs ~0.1 s: only when something went

    def _kept_buffer_bytes(self) -> int:
        return sum(e.host.nbytes for e in self._entries.values() if e.on_device and e.host)

    def _release_kept_buffers(self, ram: int) -> int:
        """Give back the page-locked copies kept for models on the device, oldest first, until
        `ram` bytes fit the RAM budget; returns what is left."""
        for entry in self._entries.values():
            if ram <= self.ram_budget_bytes:
                break
            if entry.on_device and entry.host is not None:
                ram -= entry.host.nbytes
                entry.release_host()
        return ram

    def _move_out(self, entry: CacheEntry) -> None:
        if self.pin_ram_tier:
            entry.host = to_host(entry.pipe, entry.host)
        else:
            entry.pipe.to("cpu")

    def _move_in(self, entry: CacheEntry) -> None:
        if self.pin_ram_tier:
            to_device(entry.pipe, self.device)
        else:
            entry.pipe.to(self.device)

    def _drop(self, key: Hashable) -> None:
        self._entries.pop(key).release_host()


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
