"""What the benches share: the real processes they start and stop (on loopback, in this
checkout), waiting for them, a fresh database, Django set up in a temporary folder, CPU and wall
time, the `ratio ... (goal ...)` lines every bench prints, and a demo job's request."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from PIL import Image

    from gpu_worker.protocol import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
NEEDS_REDIS = "run under `python -m operations.with_redis --` (needs REDIS_URL)"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], object], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(poll)
    raise SystemExit(f"timed out waiting for {what}")


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """One of our processes, from the checkout's root, its output dropped."""
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def gpu_worker_args(
    models: Path, worker_id: str | None = None, cache_dir: Path | None = None
) -> list[str]:
    """`python -m gpu_worker` on the CPU with the demo model preloaded."""
    args = [sys.executable, "-m", "gpu_worker", "--models-dir", str(models), "--device", "cpu"]
    if worker_id:
        args += ["--worker-id", worker_id]
    args += ["--preload", "atelier-demo-v1"]
    if cache_dir:
        args += ["--cache-dir", str(cache_dir)]
    return args


def stop(procs: Iterable[subprocess.Popen[bytes]], timeout: float = 30) -> None:
    """Terminate them all, then wait for each (killed if it outlasts the timeout)."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wall_and_cpu(action: Callable[[], T]) -> tuple[float, float, T]:
    """Wall seconds and this process's CPU seconds taken by action(), and its result."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = action()
    return time.perf_counter() - t0, time.process_time() - c0, result


def vs_goal(ratio: float, goal: str, digits: int = 2) -> str:
    """'ratio 1.02  (goal <= 1.10)'"""
    return f"ratio {ratio:.{digits}f}  (goal {goal})"


def fresh_postgres(url: str, *, force: bool = True, connect_timeout: int | None = 3) -> bool:
    """Drop and create the bench database; False when no server answers."""
    import dj_database_url
    import psycopg

    config = dj_database_url.parse(url)
    try:
        admin = psycopg.connect(
            host=config["HOST"],
            port=config["PORT"] or 5432,
            user=config["USER"],
            password=config["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
            connect_timeout=connect_timeout,
        )
    except psycopg.OperationalError:
        return False
    with admin:
        admin.execute(
            f'DROP DATABASE IF EXISTS "{config["NAME"]}"' + (" WITH (FORCE)" if force else "")
        )
        admin.execute(f'CREATE DATABASE "{config["NAME"]}"')
    return True


def setup_django(tmp: Path, database_url: str = "", extra: dict[str, str] | None = None) -> None:
    """Django on a temporary folder (SQLite there unless database_url), migrated."""
    os.environ.update(
        {
            "ATELIER_VAR_DIR": str(tmp / "var"),
            "DATABASE_URL": database_url or f"sqlite:///{tmp / 'var' / 'bench.sqlite3'}",
            "MEDIA_ROOT": str(tmp / "media"),
            "MODELS_DIR": str(tmp / "models"),
            **(extra or {}),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            # As deployed (production mode turns DEBUG off): no per-query debug log.
            "DEBUG": "false",
            "AXES_ENABLED": "false",
            # Throttles still run (their cost is part of the overhead) but never refuse.
            "API_THROTTLE_USER": "1000000/min",
            "LOG_LEVEL": "WARNING",
        }
    )
    (tmp / "var").mkdir(parents=True, exist_ok=True)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def per_database(script: str, run: Callable[[str, str], int], postgres_url: str) -> int:
    """A bench's main: once on SQLite and once on a fresh PostgreSQL database, each in its own
    process (Django is set up once per process); `--database URL|sqlite` runs one."""
    if not os.environ.get("REDIS_URL"):
        print(NEEDS_REDIS)
        return 2
    if "--database" in sys.argv:
        url = sys.argv[sys.argv.index("--database") + 1]
        return run("", "SQLite") if url == "sqlite" else run(url, "PostgreSQL")
    rc = subprocess.call([sys.executable, script, "--database", "sqlite"])
    if fresh_postgres(postgres_url):
        rc = rc or subprocess.call([sys.executable, script, "--database", postgres_url])
    else:
        print(f"--- PostgreSQL: skipped (no server at {postgres_url.split('@')[-1]}) ---")
    return rc


def demo_request(**overrides: Any) -> GenerationRequest:
    """A txt2img request for the demo checkpoint, as the platform sends one: 64x64, 4 steps,
    one image, unless `overrides` say otherwise (each bench names what it measures)."""
    from gpu_worker.protocol import GenerationRequest

    fields: dict[str, Any] = {
        "job_id": uuid.uuid4().hex,
        "attempt": 1,
        "events_group": "bench." + uuid.uuid4().hex,
        "mode": "txt2img",
        "checkpoint": "atelier-demo-v1",
        "vae": None,
        "prompt": "a photo of a cat",
        "negative_prompt": "",
        "sampler": "Euler a",
        "scheduler": "Automatic",
        "steps": 4,
        "cfg_scale": 7.0,
        "width": 64,
        "height": 64,
        "seed": 1234,
        "batch_size": 1,
        "n_iter": 1,
        "clip_skip": 1,
        "denoising_strength": 0.75,
        "resize_mode": 0,
        "hires": None,
        "loras": [],
    }
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[typeddict-item]


def png_pixels(png_b64: str) -> Any:
    """A result image's RGB pixels as int16 (differences do not wrap around)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB")
    return np.asarray(image, dtype=np.int16)


def pixel_difference(a: str, b: str) -> int:
    """The largest difference (0-255) between two result images' pixels."""
    return int(abs(png_pixels(a) - png_pixels(b)).max())


SD15_NAME = "sd15-random"


def sd15_checkpoint(models: Path) -> str:
    """Put a full-size SD 1.5-architecture checkpoint (random weights, fp16, one original-layout
    .safetensors file of about 2 GB) in the models folder and return its name, so the engine's
    single-file loader is what the GPU benches measure. BENCH_SD15_FILE names a file kept
    between benches (written the first time, linked after)."""
    target = models / "Stable-diffusion" / f"{SD15_NAME}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    shared = os.environ.get("BENCH_SD15_FILE")
    if not shared:
        write_sd15_checkpoint(target)
        return SD15_NAME
    if not Path(shared).exists():
        write_sd15_checkpoint(Path(shared))
    target.symlink_to(Path(shared).resolve())
    return SD15_NAME


def write_sd15_checkpoint(path: Path) -> None:
    import json

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from gpu_worker.demo_model import unet_to_ldm, vae_to_ldm
    from gpu_worker.loading import SHIPPED_CONFIGS

    started = time.perf_counter()
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
    print(f"wrote a random SD 1.5 checkpoint in {time.perf_counter() - started:.1f} s", flush=True)


def result_picture(side: int) -> Image.Image:
    """A side x side picture about as hard to compress as the demo model's output (a gradient
    with noise), the same every run."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 190, side)[None, :, None]
    return Image.fromarray((rng.random((side, side, 3)) * 64 + ramp).astype("uint8"))


def result_png(image: Image.Image) -> bytes:
    """Its PNG as a worker writes a result: with an infotext."""
    from gpu_worker.infotext import png_with_infotext

    return png_with_infotext(image, "a lighthouse at dusk\nSteps: 10, Seed: 1")
