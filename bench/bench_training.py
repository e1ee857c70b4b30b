"""Training overhead: a LoRA training job through the whole platform vs the training loop called
directly in this process.

    python -m operations.with_redis -- python bench/bench_training.py

Starts, in a temporary folder, the real processes on loopback: daphne (web: the worker fetches
the dataset and posts each epoch there), the platform worker and one GPU worker
(`python -m gpu_worker`) on the demo model. Each run submits the same training job (REST API)
and waits for it to succeed; then, in this process, the same work without the platform: load
the checkpoint, LoraTrainer over the same images, and for each epoch train, render the sample,
write the kohya file and the resumable state (what the worker does between posts). Runs are
interleaved so that a busy machine slows both alike. Prints the medians, their ratio, and where
the platform's extra time goes (submit-to-start, the worker's own total, start-to-recorded).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One CPU thread, as `python -m gpu_worker` sets before torch loads: the same for both sides.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import http.client
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import NEEDS_REDIS, free_port, gpu_worker_args, setup_django, start, stop, wait_until

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
IMAGES = 8
TRAIN = {"epochs": 3, "repeats": 5, "batch_size": 2, "resolution": 64, "rank": 8, "alpha": 8}
SAMPLE: dict[str, Any] = {
    "prompt": "sqz, a square",
    "steps": 4,
    "width": 64,
    "height": 64,
    "seed": 5,
}


def call(port: int, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Host": "127.0.0.1"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body), "application/json"
    conn.request(method, path, data, headers)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, json.loads(raw) if raw else None


def pngs() -> list[tuple[str, bytes]]:
    from PIL import Image

    files = []
    for i in range(IMAGES):
        out = io.BytesIO()
        size = (64, 64) if i % 2 else (96, 48)  # two aspect buckets
        Image.new("RGB", size, (i * 30 % 256, 80, 255 - i * 30 % 256)).save(out, "PNG")
        files.append((f"{i}.png", out.getvalue()))
    return files


def setup(tmp: Path, port: int) -> tuple[str, int, Any]:
    delivery = {
        "MODEL_STORE_DIR": str(tmp / "store"),
        "MODEL_DELIVERY_BASE_URL": f"http://127.0.0.1:{port}",
    }
    setup_django(tmp, extra=delivery)
    from accounts import ledger
    from accounts.models import ApiToken, MembershipTier, User
    from generation.catalogue_sync import sync_catalogue
    from generation.training_datasets import create_dataset
    from gpu_worker.demo_model import make_demo_models

    make_demo_models(tmp / "models")
    sync_catalogue(models_dir=tmp / "models", include_workers=False)
    MembershipTier.objects.update(max_trainings=RUNS + 1, max_unfinished_jobs=RUNS + 1)
    user = User.objects.create_user("bench", "bench@example.com", "x" * 20)
    ledger.credit(user, 100000, "grant", reason="bench")
    token = ApiToken.issue(user, "bench")[1]
    dataset = create_dataset(user, "squares", "sqz", [(n, io.BytesIO(d)) for n, d in pngs()])
    return token, dataset.pk, dataset


def direct_loop(tmp: Path) -> Callable[[], float]:
    """The baseline: the same work in this process, no platform around it."""
    import torch
    from PIL import Image

    from gpu_worker.catalogue import scan_models
    from gpu_worker.loading import load_checkpoint
    from gpu_worker.params import TRAIN_DEFAULTS
    from gpu_worker.training import LoraTrainer, TrainingImage

    torch.set_num_threads(1)
    item = scan_models(tmp / "models").resolve("checkpoint", "atelier-demo-v1")
    params: Any = {
        **TRAIN_DEFAULTS,
        **TRAIN,
        "dataset_id": 0,
        "output_name": "bench",
        "trigger_word": "sqz",
        "images": [],
    }
    images = [(Image.open(io.BytesIO(d)).convert("RGB")) for _n, d in pngs()]

    def run_once() -> float:
        t0 = time.perf_counter()
        pipe = load_checkpoint(item, dtype=torch.float32, cache_dir=tmp / "cache")
        pipe.set_progress_bar_config(disable=True)
        dataset = [TrainingImage(image, f"sqz, square {i}") for i, image in enumerate(images)]
        trainer = LoraTrainer(pipe, item.family, params, dataset, seed=SAMPLE["seed"])
        while trainer.epoch < TRAIN["epochs"]:
            trainer.train_epoch()
            trainer.sample(
                SAMPLE["prompt"],
                "",
                steps=SAMPLE["steps"],
                cfg_scale=7.0,
                width=SAMPLE["width"],
                height=SAMPLE["height"],
                infotext="",
            )
            trainer.kohya_file(
                output_name="bench",
                base_name=item.name,
                base_sha256=item.sha256,
                architecture=item.architecture,
            )
            trainer.state_bytes()
        return time.perf_counter() - t0

    return run_once


def main() -> int:
    if not os.environ.get("REDIS_URL"):
        print(NEEDS_REDIS)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-training-"))
    port = free_port()
    token, dataset_id, _dataset = setup(tmp, port)
    from generation.models import Job

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    python = sys.executable
    procs = []
    try:
        web = [
            python,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "config.asgi:application",
        ]
        procs.append(start(web, env))
        wait_until(
            lambda: call(port, token, "GET", "/api/v1/me/")[0] == 200, 30, "the web", poll=0.05
        )
        procs.append(start([python, "manage.py", "run_platform_worker"], env))
        procs.append(start(gpu_worker_args(tmp / "models"), env))
        direct = direct_loop(tmp)
        direct()  # warm: imports and the first load

        platform_s: list[float] = []
        direct_s: list[float] = []
        hops: dict[str, list[float]] = {
            "submit-to-start": [],
            "worker": [],
            "start-to-recorded (minus worker)": [],
        }
        for run in range(RUNS + 1):
            body = {
                "checkpoint": "atelier-demo-v1",
                **SAMPLE,
                "train": {"dataset_id": dataset_id, "output_name": f"bench-{run}", **TRAIN},
            }
            t0 = time.perf_counter()
            status, job = call(port, token, "POST", "/api/v1/training/jobs/", body)
            assert status == 201, job
            job_id = job["id"]

            def done(job_id: str = job_id) -> bool:
                return Job.objects.filter(pk=job_id, status__in=Job.TERMINAL).exists()

            wait_until(done, 600, "the training job", poll=0.05)
            elapsed = time.perf_counter() - t0
            row = Job.objects.get(pk=job_id)
            assert row.status == "succeeded", row.error
            baseline = direct()
            if run == 0:
                continue  # the worker's first job pays its imports
            platform_s.append(elapsed)
            direct_s.append(baseline)
            assert row.started_at and row.finished_at
            worker = float(row.timings.get("total_s", 0))
            hops["submit-to-start"].append((row.started_at - row.created_at).total_seconds())
            hops["worker"].append(worker)
            hops["start-to-recorded (minus worker)"].append(
                (row.finished_at - row.started_at).total_seconds() - worker
            )
    finally:
        stop(procs)
    steps = row.total_steps
    p, d = statistics.median(platform_s), statistics.median(direct_s)
    print(f"training job: {IMAGES} images, {TRAIN}, {steps} optimizer steps; median of {RUNS}")
    print(f"  through the platform (POST -> succeeded recorded): {p:.2f} s")
    print(f"  training loop called directly (load, epochs, samples, files): {d:.2f} s")
    print(f"  ratio platform / direct: {p / d:.2f}")
    for name, values in hops.items():
        print(f"    {name}: {statistics.median(values):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
