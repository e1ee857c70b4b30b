"""GPU model switch: a full-size SD 1.5-architecture checkpoint (random weights, fp16, about
2.1 GB of weights) between CPU RAM and the GPU, the model cache's page-locked RAM tier against
plain `.to()` (pageable memory).

    python bench/bench_gpu_model_switch.py     (needs CUDA; prints "skipped" without it)

Figures, medians of BENCH_CYCLES:
  move in      RAM -> GPU, every weight of the pipeline (the part a waiting job sees)
  move out     GPU -> RAM
  switch       ModelCache.get of the model waiting in RAM with a device budget of one model:
               the other moves out, this one in (what a job for the other model costs)
Goal (issue 21): a switch of a full-size SD 1.5 checkpoint from RAM <= 0.5 s. Also checks that
a job's image is bit-identical after its model has been out to pinned RAM and back.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from support import demo_request, pixel_difference, sd15_checkpoint, vs_goal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CYCLES = int(os.environ.get("BENCH_CYCLES", "5"))


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu_model_switch: no CUDA device: skipped")
        return
    from gpu_worker.engine import Engine
    from gpu_worker.loading import load_checkpoint
    from gpu_worker.model_cache import ModelCache, pipeline_bytes

    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-switch-"))
    checkpoint = sd15_checkpoint(tmp / "models")
    cache = tmp / "cache"

    def engine(pinned: bool, budget: int) -> Engine:
        models = ModelCache(
            device="cuda", device_budget_bytes=budget, ram_budget_bytes=16 << 30,
            pin_ram_tier=pinned,
        )  # fmt: skip
        return Engine(models_dir=tmp / "models", cache=models, cache_dir=cache)

    def timed(fn: Callable[[], Any]) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    probe = engine(True, 40 << 30)
    item = probe.resolve("checkpoint", checkpoint)
    pipe = probe.pipeline(item, None)
    size = pipeline_bytes(pipe)
    request = demo_request(checkpoint=checkpoint, steps=8, width=512, height=512, seed=3)
    before = probe.run(request).images[0]["png_b64"]

    moves = time_moves(pipe, timed)
    after = probe.run(request).images[0]["png_b64"]
    del pipe
    probe.cache.clear()

    # whole switches through the cache: two models, room on the GPU for one
    def switch_times(pinned: bool) -> list[float]:
        target = engine(pinned, int(size * 1.5))
        for key in ("a", "b"):  # both loaded from the file; "a" now waits in RAM
            target.cache.get(
                key, lambda: load_checkpoint(item, dtype=torch.float16, cache_dir=cache)
            )
        out = [
            timed(partial(target.cache.get, "ab"[i % 2], _unreachable)) for i in range(2 * CYCLES)
        ]
        assert target.cache.stats.offloads >= 2 * CYCLES
        target.cache.clear()
        return out

    switches = {"pageable": switch_times(False), "pinned": switch_times(True)}

    gb = size / 1e9
    print(f"SD 1.5 pipeline, {gb:.2f} GB of fp16 weights, {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}; medians of {CYCLES}")  # fmt: skip
    for way in ("in", "out"):
        slow = statistics.median(moves[f"{way} pageable"])
        fast = statistics.median(moves[f"{way} pinned"])
        print(
            f"  move {way:<4} pageable {slow * 1000:7.1f} ms ({gb / slow:5.1f} GB/s)   "
            f"pinned {fast * 1000:7.1f} ms ({gb / fast:5.1f} GB/s)   pageable/pinned "
            f"{slow / fast:.1f}x"
        )
    slow, fast = (statistics.median(switches[k]) for k in ("pageable", "pinned"))
    print(
        f"  switch through the cache: pageable {slow * 1000:.1f} ms, pinned {fast * 1000:.1f} ms"
        f" ({slow / fast:.1f}x faster); pinned vs goal 0.5 s: " + vs_goal(fast / 0.5, "<= 1.00")
    )
    same = (
        "bit-identical"
        if before == after
        else f"DIFFERENT by up to {pixel_difference(before, after)}"
    )
    print(f"  a job's image after {2 * CYCLES} trips out and back: {same}")


def time_moves(pipe: Any, timed: Callable[[Callable[[], Any]], float]) -> dict[str, list[float]]:
    """Both ways, pageable (`.to()`) and pinned (`host_weights`), CYCLES times each."""
    import torch

    from gpu_worker.host_weights import HostWeights, to_device, to_host

    cuda = torch.device("cuda")
    moves: dict[str, list[float]] = {}
    host: HostWeights | None = None

    def pinned_out() -> None:
        nonlocal host
        host = to_host(pipe, host)

    for _ in range(CYCLES):
        for name, move in (
            ("out pageable", lambda: pipe.to("cpu")),
            ("in pageable", lambda: pipe.to(cuda)),
            ("out pinned", pinned_out),
            ("in pinned", lambda: to_device(pipe, cuda)),
        ):
            moves.setdefault(name, []).append(timed(move))
    assert host is not None and host.pinned, "the RAM copy was not page-locked"
    host.release()
    return moves


def _unreachable() -> Any:
    raise AssertionError("the cache should hold both models")


if __name__ == "__main__":
    main()
