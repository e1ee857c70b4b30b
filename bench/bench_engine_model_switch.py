"""Model switch: cycling 3 checkpoints through the model cache vs loading from disk each time.

    python bench/bench_engine_model_switch.py

Demo-size checkpoints (single-file, original layout). Figures, medians over the cycle:
  cold      load the checkpoint from disk (from_single_file) for every switch
  cached    ModelCache.get for a model held on the device (all 3 fit the budget)
  ram tier  device budget of one model: each switch moves one in and one out (on a CPU
            device the move is bookkeeping; on a GPU it is a host->device copy)
and the same as whole jobs (switch + a 64x64 4-step image). Goal: cached >= 10x faster.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from support import demo_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CYCLES = int(os.environ.get("BENCH_CYCLES", "5"))
NAMES = ("atelier-demo-v1", "atelier-demo-v2", "atelier-demo-v3")


def main() -> None:
    import torch

    from gpu_worker.catalogue import CatalogueItem
    from gpu_worker.demo_model import make_demo_models, write_demo_checkpoint
    from gpu_worker.engine import Engine
    from gpu_worker.loading import load_checkpoint
    from gpu_worker.model_cache import ModelCache, pipeline_bytes

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    make_demo_models(tmp / "models")
    write_demo_checkpoint(tmp / "models", "atelier-demo-v3", 3)

    def engine(device_budget: int) -> Engine:
        cache = ModelCache(
            device="cpu", device_budget_bytes=device_budget, ram_budget_bytes=1 << 30
        )
        return Engine(models_dir=tmp / "models", cache=cache, cache_dir=tmp / "cache")

    probe = engine(1 << 30)
    items = [probe.resolve("checkpoint", n) for n in NAMES]
    load_checkpoint(items[0], dtype=torch.float32, cache_dir=tmp / "cache")  # imports, configs
    size = pipeline_bytes(probe.pipeline(items[0], None))

    def cold(item: CatalogueItem) -> None:
        load_checkpoint(item, dtype=torch.float32, cache_dir=tmp / "cache")

    def cycle(
        fn: Callable[[CatalogueItem], object], before: Callable[[], object] | None = None
    ) -> list[float]:
        out = []
        for _ in range(CYCLES):
            for item in items:
                if before is not None:
                    before()
                t0 = time.perf_counter()
                fn(item)
                out.append(time.perf_counter() - t0)
        return out

    hot = engine(1 << 30)
    tier = engine(int(size * 1.5))
    for e in (hot, tier):
        for item in items:
            e.pipeline(item, None)
    figures = {
        "cold": cycle(cold),
        "cached": cycle(lambda item: hot.pipeline(item, None)),
        "ram tier": cycle(lambda item: tier.pipeline(item, None)),
    }

    def job(target: Engine) -> Callable[[CatalogueItem], None]:
        def run(item: CatalogueItem) -> None:
            target.run(demo_request(checkpoint=item.name, prompt="a cat", seed=1))

        return run

    empty = engine(1 << 30)
    empty.refresh_catalogue()
    figures["job, cold load"] = cycle(job(empty), before=empty.cache.clear)  # empty each time
    figures["job, cached"] = cycle(job(hot))

    print(f"3 demo checkpoints ({size / 1e6:.1f} MB each in fp32), {CYCLES} cycles, CPU, medians")
    base = statistics.median(figures["cold"])
    for name in ("cold", "cached", "ram tier"):
        med = statistics.median(figures[name])
        print(f"  switch {name:<10} {med * 1000:10.3f} ms   cold/this = {base / med:10.1f}x")
    jb = statistics.median(figures["job, cold load"])
    for name in ("job, cold load", "job, cached"):
        med = statistics.median(figures[name])
        print(f"  {name:<17} {med * 1000:10.3f} ms   cold/this = {jb / med:10.1f}x")


if __name__ == "__main__":
    main()
