"""GPU throughput: an SD 1.5-architecture model (random weights, fp16, SDPA) at 512x512 through
the engine, with the worker's speed options (--channels-last, --compile) against plain eager,
and the same diffusers call made directly.

    python bench/bench_engine_gpu_unet.py            (needs CUDA; prints "skipped" without it)
    BENCH_ALLOW_CPU=1 BENCH_SIZE=64 BENCH_STEPS=2 BENCH_VARIANTS=eager \\
        python bench/bench_engine_gpu_unet.py        (a slow CPU dry run of the same code)

For each variant (an Engine of its own, the checkpoint loaded through the single-file loader,
the speed options applied as the worker applies them), alternated over BENCH_RUNS rounds,
medians:
  sampling it/s   20 more steps / the extra time a 40-step job takes over a 20-step one (text
                  encoding, VAE decode and PNG cancel out): what A1111's it/s counts
  job it/s        steps / the whole 20-step job's time
  UNet it/s       one CFG step's UNet call alone (batch 2), timed over BENCH_UNET_ITERS calls
Goal (issue 21): sampling >= 110 it/s on an H100/H200-class GPU, the best public figure for
this model being about 105. The first jobs of a compiled variant compile it: "warm-up" says
how long that took (a worker pays it once per shape).
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
from typing import Any

from support import demo_request, pixel_difference, sd15_checkpoint, vs_goal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE = int(os.environ.get("BENCH_SIZE", "512"))
STEPS = int(os.environ.get("BENCH_STEPS", "20"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
UNET_ITERS = int(os.environ.get("BENCH_UNET_ITERS", "50"))
GOAL_ITS = 110.0
# name: (channels_last, compile mode); --compile default / reduce-overhead (CUDA graphs)
VARIANTS = {
    "eager": (False, "off"),
    "channels_last": (True, "off"),
    "compile": (True, "default"),
    "cudagraphs": (True, "reduce-overhead"),
}


def main() -> None:
    import torch

    if not torch.cuda.is_available() and not os.environ.get("BENCH_ALLOW_CPU"):
        print("bench_engine_gpu_unet: no CUDA device: skipped")
        return
    import torch._dynamo

    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.samplers import build_scheduler, resolve_sampler
    from gpu_worker.speed_options import SpeedOptions

    # four compiled copies of one forward share dynamo's cache of it: room for each's shapes
    torch._dynamo.config.cache_size_limit = 64
    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = os.environ.get("BENCH_VARIANTS", ",".join(VARIANTS)).split(",")
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-gpu-"))
    checkpoint = sd15_checkpoint(tmp / "models")

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[[], Any]) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    engines: dict[str, Engine] = {}
    for name in chosen:
        channels_last, mode = VARIANTS[name]
        cache = ModelCache(device=device, device_budget_bytes=40 << 30, ram_budget_bytes=8 << 30)
        engines[name] = Engine(
            models_dir=tmp / "models",
            cache=cache,
            cache_dir=tmp / "cache",
            speed=SpeedOptions(channels_last=channels_last, compile_mode=mode),
        )

    def job(engine: Engine, steps: int) -> Callable[[], Any]:
        request = demo_request(
            checkpoint=checkpoint, sampler="Euler", steps=steps, width=SIZE, height=SIZE, seed=1
        )
        return lambda: engine.run(request)

    def unet_calls(engine: Engine) -> Callable[[], None]:
        pipe = engine.pipeline(engine.resolve("checkpoint", checkpoint), None)
        latents = torch.randn(2, 4, SIZE // 8, SIZE // 8, device=device, dtype=engine.dtype)
        text = torch.randn(2, 77, 768, device=device, dtype=engine.dtype)
        step = torch.tensor(500, device=device)

        def run() -> None:
            with torch.no_grad():
                for _ in range(UNET_ITERS):
                    pipe.unet(latents, step, encoder_hidden_states=text)

        return run

    eager_pipe, first_image = None, None
    for name, engine in engines.items():
        t0 = time.perf_counter()
        pipe = engine.pipeline(engine.resolve("checkpoint", checkpoint), None)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        image = job(engine, STEPS)().images[0]["png_b64"]
        job(engine, 2 * STEPS)()
        unet_calls(engine)()
        sync()
        warm = time.perf_counter() - t0
        first_image = image if first_image is None else first_image
        difference = pixel_difference(image, first_image)
        print(
            f"{name:<14} loaded in {load_s:5.1f} s, warm-up (compiles) {warm:6.1f} s, "
            f"largest pixel difference from {chosen[0]}: {difference} of 255",
            flush=True,
        )
        if name == "eager":
            eager_pipe = pipe

    def direct() -> None:  # the eager pipeline called as a diffusers user would
        assert eager_pipe is not None
        eager_pipe.scheduler = build_scheduler(
            resolve_sampler("Euler"), eager_pipe.scheduler.config, seed=1
        )
        eager_pipe(
            "a photo of a cat",
            num_inference_steps=STEPS,
            guidance_scale=7.0,
            width=SIZE,
            height=SIZE,
            generator=[torch.Generator("cpu").manual_seed(1)],
        )

    figures: dict[str, dict[str, list[float]]] = {
        n: {"short": [], "long": [], "unet": []} for n in engines
    }
    direct_s: list[float] = []
    for _ in range(RUNS):
        for name, engine in engines.items():
            figures[name]["short"].append(timed(job(engine, STEPS)))
            figures[name]["long"].append(timed(job(engine, 2 * STEPS)))
            figures[name]["unet"].append(timed(unet_calls(engine)) / UNET_ITERS)
        if eager_pipe is not None:
            direct_s.append(timed(direct))

    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    dtype = next(iter(engines.values())).dtype
    print(
        f"SD 1.5 architecture, random weights, {SIZE}x{SIZE}, Euler, CFG 7, {dtype}, "
        f"SDPA, {gpu}, torch {torch.__version__}; medians of {RUNS} rounds"
    )
    print(f"  {'variant':<14} {'sampling it/s':>13} {'job it/s':>9} {'UNet it/s':>10}   vs eager")
    base = None
    for name in engines:
        short = statistics.median(figures[name]["short"])
        extra = statistics.median(
            long - short
            for long, short in zip(figures[name]["long"], figures[name]["short"], strict=True)
        )
        sampling = STEPS / extra if extra > 0 else float("nan")
        unet = 1 / statistics.median(figures[name]["unet"])
        base = base or sampling
        print(
            f"  {name:<14} {sampling:13.1f} {STEPS / short:9.1f} {unet:10.1f}   "
            f"{sampling / base:.2f}x   sampling vs goal {GOAL_ITS:.0f}: "
            + vs_goal(sampling / GOAL_ITS, ">= 1.00")
        )
    if direct_s and "eager" in figures:
        engine_s = statistics.median(figures["eager"]["short"])
        print(
            f"  eager engine job vs the same diffusers call made directly "
            f"({statistics.median(direct_s):.3f} s): "
            + vs_goal(engine_s / statistics.median(direct_s), "<= 1.05", 3)
        )


if __name__ == "__main__":
    main()
