"""Faults at the true boundary of a batch: the UNet itself raising (CUDA's out-of-memory error
or any other), from a real torch forward pre-hook on the loaded model (no stand-in for our
code)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

OUT_OF_MEMORY = "CUDA out of memory. Tried to allocate 20.00 GiB"


@dataclass
class UnetCalls:
    rows: list[int] = field(default_factory=list)  # each call's batch size, in order
    raised: list[str] = field(default_factory=list)  # the faults raised, in order


@contextmanager
def unet_faults(unet: Any, fault: Callable[[UnetCalls], str | None]) -> Iterator[UnetCalls]:
    """Until exit, each call of `unet` (its row count appended to `rows` first) raises
    RuntimeError(message) when `fault` returns a message."""
    calls = UnetCalls()

    def hook(_module: Any, args: tuple[Any, ...]) -> None:
        calls.rows.append(int(args[0].shape[0]))
        message = fault(calls)
        if message is not None:
            calls.raised.append(message)
            raise RuntimeError(message)

    handle = unet.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def out_of_memory_once(when: Callable[[int], bool]) -> Callable[[UnetCalls], str | None]:
    """CUDA's out-of-memory error on the first call whose row count `when` accepts."""

    def fault(calls: UnetCalls) -> str | None:
        return OUT_OF_MEMORY if not calls.raised and when(calls.rows[-1]) else None

    return fault


def demo_unet(engine: Any, checkpoint: str = "atelier-demo-v1") -> Any:
    """The UNet of the engine's cached pipeline for `checkpoint` (no VAE override), loaded now
    if it is not yet: the module the worker's jobs call."""
    return engine.pipeline(engine.resolve("checkpoint", checkpoint), None).unet
