"""`python -m gpu_worker`: the GPU worker process and its operator commands.

    python -m gpu_worker [worker] [options]      run jobs from this worker's queue (default)
    python -m gpu_worker generate --model NAME --prompt TEXT --out FILE.png
    python -m gpu_worker make-demo-model [--models-dir DIR]
    python -m gpu_worker scan [--models-dir DIR]

torch is imported only after the thread policy is set (environment variables must come first).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from gpu_worker.batch_key import MAX_BATCH_IMAGES
from gpu_worker.cache_dir import default_cache_dir, keep_compiled_kernels
from gpu_worker.channel_layer import CHANNEL_LAYER_BACKENDS, DEFAULT_CHANNEL_LAYER
from gpu_worker.protocol import (
    DEFAULT_DOWNLOAD_BYTES_PER_S,
    HEARTBEAT_INTERVAL_SECONDS,
    HEARTBEAT_TTL_SECONDS,
)
from gpu_worker.result_encoding import default_encode_threads
from gpu_worker.speed_options import COMPILE_MODES

log = logging.getLogger("gpu_worker")

SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def parse_size(text: str) -> int:
    """ "8G", "512MiB", "1.5g", "1000000" -> bytes."""
    match = SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 8G, 512M)")
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))


def env_flag(name: str) -> bool:
    """An on/off variable: 1/true or 0/false (unset: off); a typo stops the worker, named."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false"):
        return False
    if raw in ("1", "true"):
        return True
    raise SystemExit(f"{name} must be 1, true, 0 or false, got {os.environ[name]!r}")


def compile_mode(text: str) -> str:
    if text not in COMPILE_MODES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a compile mode (ATELIER_TORCH_COMPILE or --compile): "
            f"choose from {', '.join(COMPILE_MODES)}"
        )
    return text


def common_options(*, suppress: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand. After it, unset ones are suppressed
    so that they do not overwrite what was given before it."""
    common = argparse.ArgumentParser(
        add_help=False, argument_default=argparse.SUPPRESS if suppress else None
    )
    common.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("MODELS_DIR", "models")),
        help="A1111-style models folder (Stable-diffusion/, Lora/, VAE/, embeddings/); "
        "default $MODELS_DIR or ./models",
    )
    common.add_argument(
        "--device",
        default=os.environ.get("ATELIER_DEVICE", "auto"),
        help="auto (cuda if available, else cpu), cpu, cuda or cuda:N",
    )
    common.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("ATELIER_TORCH_THREADS", "1")),
        help="CPU threads for torch (default 1: torch's spinning threads fall off a cliff on "
        "small shared machines; OMP_WAIT_POLICY=PASSIVE is set too). Raise it on a dedicated "
        "CPU-only box.",
    )
    common.add_argument(
        "--gpu-memory-budget",
        type=parse_size,
        default=None,
        help="bytes of models kept on the device (e.g. 10G); default 80%% of the GPU, or the RAM "
        "budget on CPU",
    )
    common.add_argument(
        "--ram-budget",
        type=parse_size,
        default=None,
        help="bytes of models kept in CPU RAM after leaving the device (default 40%% of RAM)",
    )
    common.add_argument(
        "--allow-pickle",
        action="store_true",
        help="also load pickle .ckpt/.pt checkpoints (they can run code: trusted files only)",
    )
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where configs/tokenizer and the hash cache go "
        "(default $ATELIER_CACHE_DIR or ~/.cache/atelier)",
    )
    common.add_argument(
        "--upscale-tile",
        type=int,
        default=None,
        help="upscaler models run on tiles of this many pixels a side (default 192, as A1111; "
        "0: whole images)",
    )
    common.add_argument(
        "--upscale-overlap",
        type=int,
        default=None,
        help="pixels neighbouring upscaler tiles share, blended (default 8)",
    )
    common.add_argument(
        "--encode-threads",
        type=int,
        default=int(os.environ.get("ATELIER_ENCODE_THREADS", str(default_encode_threads()))),
        help="threads that write result PNGs and thumbnails beside sampling (default the "
        "cores, at most 4; 0: on the sampling thread, the GPU waiting for them)",
    )
    common.add_argument(
        "--channels-last",
        action="store_true",
        default=env_flag("ATELIER_CHANNELS_LAST"),
        help="UNet and VAE convolution weights in channels_last (NHWC) layout",
    )
    common.add_argument(
        "--compile",
        type=compile_mode,  # also checks $ATELIER_TORCH_COMPILE (argparse types string defaults)
        choices=COMPILE_MODES,
        default=os.environ.get("ATELIER_TORCH_COMPILE", "off"),
        help="torch.compile each UNet (reduce-overhead: with CUDA graphs); every new size or "
        "batch compiles once, a minute or more (kept in the cache folder; default off)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    if suppress:
        for action in common._actions:
            action.default = argparse.SUPPRESS
    return common


def build_parser() -> argparse.ArgumentParser:
    top, common = common_options(suppress=False), common_options(suppress=True)
    parser = argparse.ArgumentParser(
        prog="python -m gpu_worker",
        description="Atelier GPU worker: runs Stable Diffusion jobs from the Dramatiq GPU queue "
        "over Redis. Needs only REDIS_URL and a models folder.",
        parents=[top],
    )
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", parents=[common], help="consume the GPU queue (default)")
    add_worker_options(worker, suppress=True)
    add_worker_options(parser, suppress=False)

    gen = sub.add_parser("generate", parents=[common], help="run one job here, without Redis")
    gen.add_argument("--model", required=True, help="checkpoint name (file name without extension)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--seed", type=int, default=-1, help="-1: random")
    gen.add_argument("--width", type=int, default=512)
    gen.add_argument("--height", type=int, default=512)
    gen.add_argument("--sampler", default="Euler a")
    gen.add_argument("--scheduler", default="Automatic", help="schedule type, e.g. Karras")
    gen.add_argument("--cfg-scale", type=float, default=7.0)
    gen.add_argument("--vae", default=None)
    gen.add_argument("--out", type=Path, required=True, help="PNG file to write")

    demo = sub.add_parser(
        "make-demo-model",
        parents=[common],
        help="write the tiny random-weight demo models into the models folder",
    )
    demo.add_argument(
        "--sdxl",
        action="store_true",
        help="also write a tiny SDXL-architecture demo (diffusers folder, atelier-demo-xl)",
    )
    sub.add_parser("scan", parents=[common], help="print the model inventory as JSON")
    return parser


def add_worker_options(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    first = len(p._actions)
    p.add_argument("--redis-url", default=None, help="default $REDIS_URL or " + DEFAULT_REDIS_URL)
    p.add_argument(
        "--channel-redis-url",
        default=None,
        help="Redis of the Channels layer for progress (default: the broker's)",
    )
    p.add_argument(
        "--channel-layer",
        default=os.environ.get("CHANNEL_LAYER", ""),
        choices=["", *CHANNEL_LAYER_BACKENDS],
        help="the web's CHANNEL_LAYER (default $CHANNEL_LAYER or " + DEFAULT_CHANNEL_LAYER + ")",
    )
    p.add_argument(
        "--worker-id",
        default=os.environ.get("ATELIER_WORKER_ID"),
        help="stable id shown on the admin page (default: hostname + random)",
    )
    p.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="NAME",
        help="checkpoint to load at boot so the first job does not wait (repeatable)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=HEARTBEAT_INTERVAL_SECONDS,
        help=f"seconds between heartbeats (default {HEARTBEAT_INTERVAL_SECONDS}); the key lives "
        f"{HEARTBEAT_TTL_SECONDS // HEARTBEAT_INTERVAL_SECONDS}x that. Shorter only for drills",
    )
    p.add_argument(
        "--disk-budget",
        type=parse_size,
        default=parse_size("50G"),
        help="disk space for members' models fetched from the platform (e.g. 50G; LRU)",
    )
    p.add_argument(
        "--download-mbps",
        type=float,
        default=DEFAULT_DOWNLOAD_BYTES_PER_S / 2**20,
        help="MiB/s this worker is assumed to fetch models from the platform until it has "
        "measured it (the scheduler counts fetch time in ETAs)",
    )
    p.add_argument(
        "--download-dir",
        type=Path,
        default=None,
        help="where fetched models are kept (default: <cache dir>/downloads)",
    )
    p.add_argument(
        "--batch-max",
        type=int,
        default=MAX_BATCH_IMAGES,
        help=f"most images of compatible jobs denoised in one UNet batch (default "
        f"{MAX_BATCH_IMAGES}; 0: every job alone)",
    )
    p.add_argument(
        "--demo-if-empty",
        action="store_true",
        help="write the demo models when no checkpoint is installed",
    )
    if suppress:
        for action in p._actions[first:]:
            action.default = argparse.SUPPRESS


def set_thread_policy(threads: int) -> None:
    """Before torch is imported: passive OpenMP waiting and a fixed number of threads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def resolve_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here")
    return device


def build_engine(args: argparse.Namespace) -> Any:
    import torch

    torch.set_num_threads(max(1, args.threads))
    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.result_encoding import ResultEncoder
    from gpu_worker.speed_options import SpeedOptions
    from gpu_worker.upscalers import TileSettings

    tiles = {"size": args.upscale_tile, "overlap": args.upscale_overlap}
    tiles = {key: value for key, value in tiles.items() if value is not None}
    device = resolve_device(args.device)
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ram_budget = args.ram_budget or int(total_ram * 0.4)
    if args.gpu_memory_budget:
        device_budget = args.gpu_memory_budget
    elif device.type == "cuda":
        device_budget = int(torch.cuda.get_device_properties(device).total_memory * 0.8)
    else:
        device_budget = ram_budget
    cache = ModelCache(
        device=device, device_budget_bytes=device_budget, ram_budget_bytes=ram_budget
    )
    return Engine(
        models_dir=args.models_dir,
        cache=cache,
        allow_pickle=args.allow_pickle,
        cache_dir=args.cache_dir or default_cache_dir(),
        upscale_tiles=TileSettings(**tiles),
        encoder=ResultEncoder(args.encode_threads),
        speed=SpeedOptions(channels_last=args.channels_last, compile_mode=args.compile),
    )


def cmd_make_demo(args: argparse.Namespace) -> int:
    from gpu_worker.demo_model import make_demo_models

    for path in make_demo_models(args.models_dir):
        print(path)
    if getattr(args, "sdxl", False):
        from gpu_worker.demo_model import write_demo_xl_folder

        print(write_demo_xl_folder(args.models_dir, args.cache_dir or default_cache_dir()))
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from gpu_worker.catalogue import scan_models

    cache_dir = args.cache_dir or default_cache_dir()
    catalogue = scan_models(
        args.models_dir, allow_pickle=args.allow_pickle, hash_cache=cache_dir / "hashes.json"
    )
    print(
        json.dumps(
            {
                "models": catalogue.entries(),
                "refused": [{"filename": f, "reason": r} for f, r in catalogue.refused],
            },
            indent=2,
        )
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import secrets

    from gpu_worker.engine import JobFailed
    from gpu_worker.protocol import GenerationRequest
    from gpu_worker.result_store import png_of

    engine = build_engine(args)
    seed = args.seed if args.seed >= 0 else secrets.randbelow(2**32)
    request = GenerationRequest(
        job_id="cli-" + uuid.uuid4().hex[:8],
        attempt=1,
        events_group="",
        mode="txt2img",
        checkpoint=args.model,
        vae=args.vae,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        sampler=args.sampler,
        scheduler=args.scheduler,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        width=args.width,
        height=args.height,
        seed=seed,
        batch_size=1,
        n_iter=1,
        clip_skip=1,
        denoising_strength=0.75,
        resize_mode=0,
        hires=None,
        loras=[],  # the record of a job's LoRAs; the engine reads the prompt's <lora:...> tags
    )
    try:
        result = engine.run(request)
    except JobFailed as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png_of(result.images[0]))
    print(result.images[0]["infotext"])
    print(json.dumps(result.timings))
    print(f"wrote {args.out} on {engine.device}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import redis

    from gpu_worker.demo_model import make_demo_models
    from gpu_worker.heartbeat import Heartbeat
    from gpu_worker.model_downloads import DownloadCache
    from gpu_worker.progress import ChannelPublisher
    from gpu_worker.service import WorkerLifecycle, WorkerService, register_actors, start_worker
    from gpu_worker.wakeup import WakeupRedisBroker

    redis_url = args.redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    worker_id = args.worker_id or f"{os.uname().nodename}-{uuid.uuid4().hex[:6]}"
    if args.demo_if_empty and not any((args.models_dir / "Stable-diffusion").glob("*")):
        make_demo_models(args.models_dir)
    engine = build_engine(args)
    if args.compile != "off" and args.batch_max > 0:
        log.warning(
            "--compile %s with cross-user batching (--batch-max %d): every batch shape compiles "
            "once, a minute or more each, before the worker is fast; --batch-max 0 avoids it",
            args.compile,
            args.batch_max,
        )
    # Timeouts so that a Redis that vanishes is noticed (events are then buffered, not lost).
    broker = WakeupRedisBroker(
        url=redis_url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=30
    )
    redis_client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    publisher = ChannelPublisher(args.channel_redis_url or redis_url, kind=args.channel_layer)
    service = WorkerService(
        engine=engine,
        broker=broker,
        redis_client=redis_client,
        publisher=publisher,
        worker_id=worker_id,
        downloads=DownloadCache(
            args.download_dir or engine.cache_dir / "downloads",
            args.disk_budget,
            bytes_per_s=args.download_mbps * 2**20,
        ),
        batch_max_images=args.batch_max,
    )
    register_actors(broker, service)
    heartbeat = Heartbeat(
        redis_client,
        service.heartbeat_snapshot,
        on_command=service.apply_command,
        on_tick=service.flush_events,
        interval=args.heartbeat_interval,
        ttl=args.heartbeat_interval * HEARTBEAT_TTL_SECONDS / HEARTBEAT_INTERVAL_SECONDS,
    )
    broker.add_middleware(WorkerLifecycle(service, preload=args.preload, heartbeat=heartbeat))

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    worker = start_worker(broker, service.queue)  # boot hooks: preload, heartbeat
    log.info(
        "worker %s on %s consuming %s at %s",
        worker_id,
        engine.device,
        service.queue,
        redis_url.split("@")[-1],
    )
    stop.wait()
    log.info("stopping: no new jobs; finishing the current one")
    # shutdown hooks mark the worker draining and give its queued jobs back to the platform
    # at once; the running job finishes, its events are sent, then the heartbeat is removed
    worker.stop(timeout=30 * 60 * 1000)
    publisher.close()
    broker.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    set_thread_policy(args.threads)
    if args.compile != "off":
        keep_compiled_kernels(args.cache_dir or default_cache_dir())
    command = args.command or "worker"
    handlers = {
        "worker": cmd_worker,
        "generate": cmd_generate,
        "make-demo-model": cmd_make_demo,
        "scan": cmd_scan,
    }
    return handlers[command](args)


if __name__ == "__main__":
    sys.exit(main())
