"""Cross-user batching: throughput of N compatible jobs in one UNet batch vs the same N run
one after another, and how far each batched image is from its serial render.

    python bench/bench_batching.py            (CPU, demo models; CUDA when present)
    BENCH_FAMILIES=sdxl python bench/bench_batching.py      (one family only)

For each family's demo checkpoint (SD 1.x: atelier-demo-v1, N in 1, 2, 4, 8; SDXL:
atelier-demo-xl, the tiny real-architecture SDXL, N in 1, 2, 4) and each N: N jobs of
different users' prompts, seeds, CFG scales and step counts (same checkpoint, size and sampler
family, so they share a batch key). Serial: `Engine.run` on each in turn. Batched:
`BatchRunner.run` with all N taken in at the first step boundary. Each figure is the median of
BENCH_RUNS rounds (default 5), both measured in the same run. Prints throughput batched /
serial (goal: > 1, growing with N), by wall time and by this process's CPU time (steadier on a
shared machine: with one thread it is the time a dedicated core would take), and the largest
pixel difference (0-255) between a batched image and its serial render (the tolerance the tests
hold it to).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from support import SD15_NAME, demo_request, pixel_difference, sd15_checkpoint, wall_and_cpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
# BENCH_COMPILE=reduce-overhead: the worker's --channels-last --compile reduce-overhead (CUDA
# graphs); each N then runs once untimed first, so compiling and recording are not measured
COMPILE = os.environ.get("BENCH_COMPILE", "off")
SIZE = int(os.environ.get("BENCH_SIZE", "128"))
# family: its demo checkpoint and the batch sizes measured (1: a job alone through the batch
# runner, no penalty, same pixels)
FAMILIES = {
    "sd1": ("atelier-demo-v1", (1, 2, 4, 8)),
    "sdxl": ("atelier-demo-xl", (1, 2, 4)),
    "sd15": (SD15_NAME, (1, 2, 4, 8)),  # full size (GPU): BENCH_FAMILIES=sd15 BENCH_SIZE=512
}
CHOSEN = os.environ.get("BENCH_FAMILIES", "sd1,sdxl").split(",")
PROMPTS = ("a red fox", "a lighthouse at dusk", "a bowl of ramen", "an old map of (Paris:1.2)")


def request(index: int, checkpoint: str) -> Any:
    return demo_request(
        checkpoint=checkpoint,
        prompt=PROMPTS[index % len(PROMPTS)],
        negative_prompt="blurry" if index % 2 else "",
        steps=10 + index % 3,  # different step counts leave the batch at different steps
        cfg_scale=(7.0, 5.0, 1.0)[index % 3],  # 1.0: no guidance, positive rows only
        width=SIZE,
        height=SIZE,
        seed=1000 + index,
    )


def serial(engine: Any, requests: list[Any]) -> tuple[float, float, list[Any]]:
    return wall_and_cpu(lambda: [engine.run(r) for r in requests])


def batched(runner: Any, requests: list[Any]) -> tuple[float, float, list[Any]]:
    """All the jobs through one BatchRunner.run, the others joining at the first step."""
    from gpu_worker.batching import BatchJob

    outcomes: dict[str, Any] = {}

    def done(job: BatchJob, outcome: Any) -> None:
        outcomes[job.request["job_id"]] = outcome

    jobs = [BatchJob(r, None, done) for r in requests]
    rest = jobs[1:]

    def take_more(room: int) -> list[BatchJob]:
        taken = rest[:room]
        del rest[: len(taken)]
        return taken

    def run_and_write() -> None:  # the serial engine.run waits for its PNGs too
        runner.run(jobs[0], take_more)
        for outcome in outcomes.values():
            if not isinstance(outcome, BaseException):
                outcome.await_images()

    elapsed, cpu, _ = wall_and_cpu(run_and_write)
    return elapsed, cpu, [outcomes[r["job_id"]] for r in requests]


def measure(engine: Any, runner: Any, checkpoint: str, n: int) -> tuple[str, int]:
    """One table row (N jobs serial and batched, RUNS rounds, medians) and its largest pixel
    difference."""
    from gpu_worker.batch_key import batch_key
    from gpu_worker.engine import GenerationResult

    requests = [request(i, checkpoint) for i in range(n)]
    assert len({batch_key(r) for r in requests}) == 1, "the jobs must share a batch key"
    walls: tuple[list[float], list[float]] = ([], [])
    cpus: tuple[list[float], list[float]] = ([], [])
    diff, peak = 0, 0
    if COMPILE != "off":
        serial(engine, requests)
        batched(runner, requests)
    for _ in range(RUNS):
        s, cs, serial_results = serial(engine, requests)
        b, cb, batch_results = batched(runner, requests)
        for series, value in zip((*walls, *cpus), (s, b, cs, cb), strict=True):
            series.append(value)
        for one, many in zip(serial_results, batch_results, strict=True):
            assert isinstance(many, GenerationResult), many
            peak = max(peak, int(many.timings.get("batch_jobs", 1)))
            for a, c in zip(one.images, many.images, strict=True):
                diff = max(diff, pixel_difference(a["png_b64"], c["png_b64"]))
    best_serial, best_batched = (statistics.median(w) for w in walls)
    ratio = best_serial / best_batched
    cpu_ratio = statistics.median(cpus[0]) / statistics.median(cpus[1])
    row = (
        f"{n:4d} {best_serial:10.3f} {best_batched:10.3f} {ratio:26.2f}x"
        f" {cpu_ratio:13.2f}x {diff:15d} {peak:11d}"
        f" {n / best_serial:16.2f} {n / best_batched:8.2f}"
    )
    return row, diff


def main() -> None:
    import torch

    from gpu_worker.batching import BatchRunner
    from gpu_worker.demo_model import make_demo_models, write_demo_xl_folder
    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.speed_options import SpeedOptions

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    if "sd1" in CHOSEN:
        make_demo_models(tmp / "models")
    if "sdxl" in CHOSEN:
        write_demo_xl_folder(tmp / "models", tmp / "cache")
    if "sd15" in CHOSEN:
        sd15_checkpoint(tmp / "models")
    cache = ModelCache(device=device, device_budget_bytes=8 << 30, ram_budget_bytes=8 << 30)
    speed = SpeedOptions(channels_last=COMPILE != "off", compile_mode=COMPILE)
    engine = Engine(models_dir=tmp / "models", cache=cache, cache_dir=tmp / "cache", speed=speed)
    for family in CHOSEN:
        checkpoint, sizes = FAMILIES[family]
        runner = BatchRunner(engine, max_images=max(sizes))
        engine.run(request(0, checkpoint))  # load and warm up
        print(
            f"cross-user batching, {checkpoint} {SIZE}x{SIZE} on {device}, {speed.describe()}, "
            f"median of {RUNS}"
        )
        print(
            "   N   serial s  batched s  throughput batched/serial  (by CPU time)"
            "  max pixel diff  peak batch  images/s serial  batched"
        )
        worst = 0
        for n in sizes:
            row, diff = measure(engine, runner, checkpoint, n)
            worst = max(worst, diff)
            print(row, flush=True)
        print(f"largest pixel difference vs serial, any N: {worst} (of 255)")


if __name__ == "__main__":
    main()
