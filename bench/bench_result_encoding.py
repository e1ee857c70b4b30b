"""Result images written beside sampling (gpu_worker/result_encoding.py) against on the
sampling thread, the worker's previous way.

    python bench/bench_result_encoding.py      (CPU, demo model; CUDA when present)

The demo SD 1.x checkpoint at BENCH_SIZE (default 512) px, torch on one thread as the worker
runs it by default, so the encoder's thread has the other core, as a GPU host's spare cores
serve the GPU's sampling thread. Each scenario alternates the two ways, BENCH_RUNS rounds
(default 3), and prints medians:

  one image's PNG and thumbnail   the cost the sampling thread paid per image before
  batch_size 4                    one job's 4 images: written in parallel, not one by one
  n_iter 4                        each iteration's image written while the next one samples
  4 jobs batched across users     jobs leaving a cross-user batch at different steps: the
                                  others step on while their PNGs are written
  (BatchRunner, all awaited)

For each: the wall time of the job(s) until every image is written, inline / beside (goal:
>= 1; on this CPU the demo model's sampling dwarfs its images, on a GPU it does not), and the
sampling thread's time spent on result images (`encode_s`; for the batch, inside its loop),
beside / inline (goal: <= 0.6; with 2 encoder threads 4 images take at least 2 rounds): on a
GPU that is time the GPU waits.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import base64
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import demo_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SIZE = int(os.environ.get("BENCH_SIZE", "512"))
STEPS = int(os.environ.get("BENCH_STEPS", "2"))


def request(**overrides: Any) -> Any:
    """The demo job at SIZE px and STEPS steps, with `overrides`."""
    fields = {"prompt": "a lighthouse at dusk", "seed": 1000, "steps": STEPS, "width": SIZE}
    return demo_request(**{**fields, "height": SIZE, **overrides})


def cross_user_batch(engine: Any) -> tuple[list[Any], float]:
    """4 jobs of different prompts and step counts through one BatchRunner, every job's
    images awaited (as the worker's reporter does) before the clock stops. The batch loop's
    own time on images is the jobs' `encode_s` before that wait."""
    from gpu_worker.batching import BatchJob, BatchRunner

    outcomes: list[Any] = []

    def told(_job: BatchJob, outcome: Any) -> None:
        outcomes.append(outcome)

    requests = [request(prompt=f"prompt {i}", seed=i, steps=STEPS + i) for i in range(4)]
    jobs = [BatchJob(r, None, told) for r in requests]
    rest = jobs[1:]

    def take_more(room: int) -> list[BatchJob]:
        taken = rest[:room]
        del rest[: len(taken)]
        return taken

    BatchRunner(engine, max_images=4).run(jobs[0], take_more)
    in_loop = sum(float(o.timings.get("encode_s", 0.0)) for o in outcomes)
    for outcome in outcomes:
        outcome.await_images()
    return outcomes, in_loop


def one_job(engine: Any, **overrides: Any) -> tuple[list[Any], float]:
    """Engine.run, which waits for its images: its `encode_s` is the sampling thread's time
    on them (the wait for the last ones included)."""
    result = engine.run(request(**overrides))
    return [result], float(result.timings.get("encode_s", 0.0))


def timed(run: Callable[[], tuple[list[Any], float]]) -> tuple[float, float]:
    """Wall seconds until every image is written, and the sampling thread's seconds on them."""
    started = time.perf_counter()
    _, on_images = run()
    return time.perf_counter() - started, on_images


def main() -> None:
    import torch

    from gpu_worker.demo_model import make_demo_models
    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.result_encoding import ResultEncoder, encode_result_image

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    make_demo_models(tmp / "models")
    cache = ModelCache(device=device, device_budget_bytes=4 << 30, ram_budget_bytes=4 << 30)
    engine = Engine(models_dir=tmp / "models", cache=cache, cache_dir=tmp / "cache")
    inline, beside = ResultEncoder(0), ResultEncoder()
    engine.encoder = inline
    warm = engine.run(request(steps=1))  # load and warm up

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(warm.images[0]["png_b64"]))) as sample:
        sample.load()
        image = sample.convert("RGB")
    costs = []
    for _ in range(5):
        started = time.perf_counter()
        encode_result_image(image, 1, warm.images[0]["infotext"])
        costs.append(time.perf_counter() - started)
    print(f"result images beside sampling, demo model {SIZE}x{SIZE}, {STEPS}+ steps on {device}")
    print(f"  one image's PNG and thumbnail: {statistics.median(costs) * 1000:.1f} ms")
    print(f"  encoder threads: {beside.threads}; medians of {RUNS}, the two ways alternated")
    scenarios: dict[str, Callable[[], tuple[list[Any], float]]] = {
        "batch_size 4": lambda: one_job(engine, batch_size=4),
        "n_iter 4": lambda: one_job(engine, n_iter=4),
        "4 jobs batched across users": lambda: cross_user_batch(engine),
    }
    print(
        f"  {'scenario':28s} {'wall inline s':>13s} {'beside s':>9s} {'inline/beside':>13s}"
        f"  {'sampling thread on images: inline':>34s} {'beside':>7s} {'ratio':>6s}"
    )
    for name, run in scenarios.items():
        walls: dict[str, list[float]] = {"inline": [], "beside": []}
        waits: dict[str, list[float]] = {"inline": [], "beside": []}
        for _ in range(RUNS):
            for way, encoder in (("inline", inline), ("beside", beside)):
                engine.encoder = encoder
                wall, wait = timed(run)
                walls[way].append(wall)
                waits[way].append(wait)
        a, b = (statistics.median(walls[w]) for w in ("inline", "beside"))
        wa, wb = (statistics.median(waits[w]) * 1000 for w in ("inline", "beside"))
        print(
            f"  {name:28s} {a:13.3f} {b:9.3f} {a / b:12.2f}x  {wa:31.0f} ms {wb:4.0f} ms"
            f" {wb / wa:5.2f}x"
        )
    print(
        "  goals: wall inline/beside >= 1 (on CPU the sampling dwarfs the images); the sampling"
        " thread's time on images beside/inline <= 0.6: on a GPU, time it no longer waits"
    )
    beside.shutdown()


if __name__ == "__main__":
    main()
