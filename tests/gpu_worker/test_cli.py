"""`python -m gpu_worker`: the operator's smoke test and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from gpu_worker.infotext import parse_infotext, read_infotext
from gpu_worker.protocol import HEARTBEAT_INDEX, HEARTBEAT_KEY

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpu_worker", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_generate_writes_a_png_without_redis(
    demo_models_dir: Path, atelier_cache_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "smoke.png"
    done = cli(
        "generate",
        "--models-dir",
        str(demo_models_dir),
        "--cache-dir",
        str(atelier_cache_dir),
        "--model",
        "atelier-demo-v1",
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--seed",
        "3",
        "--width",
        "64",
        "--height",
        "64",
        "--sampler",
        "DPM++ 2M Karras",
        "--out",
        str(out),
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"},
    )  # Redis not used
    assert done.returncode == 0, done.stderr
    parsed = parse_infotext(read_infotext(out.read_bytes()) or "")
    assert parsed["Seed"] == "3" and parsed["Sampler"] == "DPM++ 2M"


def test_scan_prints_the_inventory(demo_models_dir: Path, atelier_cache_dir: Path) -> None:
    done = cli("scan", "--models-dir", str(demo_models_dir), "--cache-dir", str(atelier_cache_dir))
    assert done.returncode == 0, done.stderr
    names = {m["name"] for m in json.loads(done.stdout)["models"]}
    assert {"atelier-demo-v1", "atelier-demo-lora", "atelier-demo-vae"} <= names


def test_worker_beats_and_stops_cleanly_on_sigterm(
    demo_models_dir: Path, atelier_cache_dir: Path, gw_redis_url: str, gw_redis: Any
) -> None:
    worker_id = "cli-test-" + uuid.uuid4().hex[:6]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpu_worker",
            "worker",
            "--models-dir",
            str(demo_models_dir),
            "--cache-dir",
            str(atelier_cache_dir),
            "--worker-id",
            worker_id,
            "--redis-url",
            gw_redis_url,
            "--preload",
            "atelier-demo-v1",
        ],
        cwd=ROOT,
        # compiling is lazy (a job's first UNet call): the flag costs the start nothing
        env={**os.environ, "ATELIER_TORCH_COMPILE": "default"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    key = HEARTBEAT_KEY.format(worker_id=worker_id)
    try:
        deadline = time.monotonic() + 60
        beat: dict = {}
        while beat.get("loaded_models") != ["atelier-demo-v1"]:  # beats from boot, then preloads
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, f"no heartbeat with the preloaded model: {beat}"
            time.sleep(0.1)
            raw = gw_redis.get(key)
            beat = json.loads(raw) if raw else {}
        assert not beat["draining"] and beat["device"] == "cpu"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert gw_redis.get(key) is None
        assert process.stdout is not None
        # the operator is told what --compile costs beside batching (README, "On a GPU")
        assert "--compile default with cross-user batching (--batch-max 8)" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
        gw_redis.srem(HEARTBEAT_INDEX, worker_id)
