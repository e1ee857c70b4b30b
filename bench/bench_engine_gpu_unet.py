"""GPU throughput: an SD 1.5-architecture model (random weights, fp16, SDPA) through the engine
vs the same diffusers call made directly: sampling iterations per second at 512x512.

    python bench/bench_engine_gpu_unet.py            (needs CUDA; prints "skipped" without it)
    BENCH_ALLOW_CPU=1 BENCH_SIZE=64 BENCH_STEPS=2 python bench/bench_engine_gpu_unet.py
                                                     (a slow CPU dry run of the same code)

The checkpoint is written once as a single original-layout .safetensors file (about 2 GB in
fp16) into a temporary models folder, so the engine's single-file loader is what is measured.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import statistics
import sys
import tempfile
import time
from pathlib import Path

from support import demo_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = int(os.environ.get("BENCH_SIZE", "512"))
STEPS = int(os.environ.get("BENCH_STEPS", "20"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def write_sd15_checkpoint(path: Path) -> None:
    import json

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from gpu_worker.demo_model import unet_to_ldm, vae_to_ldm
    from gpu_worker.loading import SHIPPED_CONFIGS

    configs = SHIPPED_CONFIGS / "sd1"
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
    text_config = json.loads((configs / "text_encoder" / "config.json").read_text())
    text = CLIPTextModel(
        CLIPTextConfig(**{k: v for k, v in text_config.items() if k != "architectures"})
    )
    state = {}
    for key, value in unet_to_ldm(unet.state_dict(), unet.config).items():
        state["model.diffusion_model." + key] = value.half()
    for key, value in vae_to_ldm(vae.state_dict(), vae.config).items():
        state["first_stage_model." + key] = value.half()
    for key, value in text.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value.half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def main() -> None:
    import torch

    if not torch.cuda.is_available() and not os.environ.get("BENCH_ALLOW_CPU"):
        print("bench_engine_gpu_unet: no CUDA device: skipped")
        return
    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.samplers import build_scheduler, resolve_sampler

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-gpu-"))
    t0 = time.perf_counter()
    write_sd15_checkpoint(tmp / "models" / "Stable-diffusion" / "sd15-random.safetensors")
    print(f"wrote a random SD 1.5 checkpoint in {time.perf_counter() - t0:.1f} s")
    cache = ModelCache(device=device, device_budget_bytes=40 << 30, ram_budget_bytes=40 << 30)
    engine = Engine(models_dir=tmp / "models", cache=cache, cache_dir=tmp / "cache")
    t0 = time.perf_counter()
    pipe = engine.pipeline(engine.resolve("checkpoint", "sd15-random"), None)
    print(f"loaded it through the engine in {time.perf_counter() - t0:.1f} s ({engine.dtype})")
    choice = resolve_sampler("Euler")

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def direct() -> None:
        pipe.scheduler = build_scheduler(choice, pipe.scheduler.config, seed=1)
        pipe(
            "a photo of a cat",
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            width=SIZE,
            height=SIZE,
            generator=[torch.Generator("cpu").manual_seed(1)],
        )

    def through_engine() -> None:
        engine.run(
            demo_request(
                checkpoint="sd15-random",
                sampler="Euler",
                steps=STEPS,
                width=SIZE,
                height=SIZE,
                seed=1,
            )
        )

    timings: dict[str, list[float]] = {"direct": [], "engine": []}
    direct()
    through_engine()
    for _ in range(RUNS):
        for name, fn in (("direct", direct), ("engine", through_engine)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            timings[name].append(time.perf_counter() - t0)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(
        f"SD 1.5 architecture, random weights, {SIZE}x{SIZE}, {STEPS} steps Euler, CFG 7, "
        f"{engine.dtype}, SDPA, {name}; whole job incl. text encoding and VAE decode"
    )
    base = statistics.median(timings["direct"])
    for label in ("direct", "engine"):
        med = statistics.median(timings[label])
        print(f"  {label:<7} {med:7.3f} s   {STEPS / med:6.2f} it/s   ratio {med / base:.3f}")


if __name__ == "__main__":
    main()
