"""The model cache: LRU under a device budget, a RAM tier, explicit byte accounting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpu_worker.catalogue import scan_models


def test_budget_offloads_then_drops_least_recently_used(
    demo_models_dir: Path, atelier_cache_dir: Path, torch: Any
) -> None:
    from gpu_worker.loading import load_checkpoint
    from gpu_worker.model_cache import ModelCache, pipeline_bytes

    catalogue = scan_models(demo_models_dir, hash_cache=atelier_cache_dir / "h.json")
    items = {n: catalogue.resolve("checkpoint", n) for n in ("atelier-demo-v1", "atelier-demo-v2")}
    loads: list[str] = []

    def loader(name: str) -> Any:
        def load() -> Any:
            loads.append(name)
            return load_checkpoint(items[name], dtype=torch.float32, cache_dir=atelier_cache_dir)

        return load

    probe = load_checkpoint(
        items["atelier-demo-v1"], dtype=torch.float32, cache_dir=atelier_cache_dir
    )
    size = pipeline_bytes(probe)
    assert 10_000_000 < size < 20_000_000  # tiny demo: ~11 MB of fp32 tensors

    cache = ModelCache(
        device="cpu", device_budget_bytes=int(size * 1.5), ram_budget_bytes=int(size * 2.5)
    )
    v1 = cache.get("v1", loader("atelier-demo-v1"))
    assert cache.device_bytes() == size
    cache.get("v2", loader("atelier-demo-v2"))
    first, second = cache.entry("v1"), cache.entry("v2")
    assert first is not None and second is not None
    assert not first.on_device and second.on_device  # v1 went to RAM
    assert cache.get("v1", loader("atelier-demo-v1")) is v1  # a move back, not a reload
    assert loads == ["atelier-demo-v1", "atelier-demo-v2"]
    assert cache.keys_hottest_first() == ["v1", "v2"]
    assert cache.stats.moves_to_device == 1 and cache.stats.offloads == 2

    small = ModelCache(device="cpu", device_budget_bytes=size, ram_budget_bytes=size)
    small.get("v1", loader("atelier-demo-v1"))
    small.get("v2", loader("atelier-demo-v2"))
    assert small.keys_hottest_first() == ["v2"]  # no room anywhere for v1: dropped
    assert small.stats.drops == 1
