"""Idle and waiting cost: CPU of idle processes, 500 waiting A1111 calls, 1,000 websockets.

    python -m operations.with_redis -- python bench/bench_idle_and_waiting.py [--quick]

The real processes on loopback, SQLite in a temporary folder (as bench_platform_overhead):
daphne, the platform worker and one GPU worker (CPU, demo model preloaded).

  idle        each process's CPU over IDLE_SECONDS (30; 10 with --quick) with nothing to do,
              as % of one core (goal < 1 % each)
  waiting     CALLS (500) concurrent A1111 `txt2img` calls held waiting (the GPU worker stopped
              first, so their jobs wait): daphne's thread count and memory before and with them
              all waiting (goal: threads flat, within +5; memory per waiting call printed)
  websockets  SOCKETS (1,000) websockets of as many members on /ws/jobs/ (bench/ws_load.py:
              receivers that only count frames), first idle for a while, then one step per
              offered rate: 10, 25, 50 and 100 % of the goal's RATE (10) events a second per
              socket, for WS_SECONDS each, group_sent over the configured channel layer
              ($CHANNEL_LAYER) by PUBLISHERS (4) processes (as several GPU workers publish).
              Per step: what the publishers managed against what was due, what the sockets
              received against what was really sent (daphne's share), the delivery lag p95,
              each side's CPU, and daphne's CPU per delivered event (its idle cost with the
              sockets open taken out). At the goal's rate: received / sent >= 0.95 and lag
              p95 < 1 s; and, since on a small machine the load generators and Redis take
              cores daphne would have, the rate at which one daphne process fills one core
              (1e6 / us per event, from the steps it kept up with) against the goal's rate.

    --websockets-only   skip idle and waiting (and the GPU worker)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_platform_overhead import Api, make_users
from support import (
    NEEDS_REDIS,
    cpu_seconds,
    free_port,
    gpu_worker_args,
    setup_django,
    start,
    stop,
    vs_goal,
    wait_until,
)
from ws_load import PREVIEW_CHARS, Tally, open_sockets

from gpu_worker.channel_layer import DEFAULT_CHANNEL_LAYER

ROOT = Path(__file__).resolve().parents[1]
QUICK = "--quick" in sys.argv
WEBSOCKETS_ONLY = "--websockets-only" in sys.argv
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "10" if QUICK else "30"))
CALLS = int(os.environ.get("BENCH_CALLS", "500"))
SOCKETS = int(os.environ.get("BENCH_SOCKETS", "1000"))
RATE = float(os.environ.get("BENCH_WS_RATE", "10"))
PUBLISHERS = int(os.environ.get("BENCH_PUBLISHERS", "4"))
WS_SECONDS = float(os.environ.get("BENCH_WS_SECONDS", "5" if QUICK else "10"))
WS_IDLE_SECONDS = 5 if QUICK else 15


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Threads", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def idle_cost(procs: dict[str, subprocess.Popen]) -> None:
    time.sleep(3)  # boot work settles
    before = {name: cpu_seconds(p.pid) for name, p in procs.items()}
    time.sleep(IDLE_SECONDS)
    print(f"idle, {IDLE_SECONDS:.0f} s:")
    for name, p in procs.items():
        share = (cpu_seconds(p.pid) - before[name]) / IDLE_SECONDS * 100
        print(f"  {name:<16} {share:6.2f} % of a core   {vs_goal(share / 1.0, '< 1')}")


async def hold_waiting_calls(port: int, username: str, token: str) -> list[Any]:
    auth = base64.b64encode(f"{username}:{token}".encode()).decode()
    body = json.dumps({"prompt": "x", "width": 64, "height": 64, "steps": 4}).encode()
    head = (
        f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    writers = []
    for _ in range(CALLS):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body)
        writers.append(writer)
    await asyncio.gather(*(w.drain() for w in writers))
    return writers


def waiting_calls(web: subprocess.Popen, port: int, token: str) -> None:
    from generation.models import Job

    before = proc_status(web.pid)

    async def run() -> dict[str, int]:
        writers = await hold_waiting_calls(port, "bench0", token)
        deadline = time.monotonic() + 120
        count = 0
        while time.monotonic() < deadline:
            count = await asyncio.to_thread(Job.objects.filter(status="queued").count)
            if count >= CALLS:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)
        during = proc_status(web.pid)
        print(f"  {count} of {CALLS} calls submitted and waiting")
        for writer in writers:
            writer.close()
        return during

    during = asyncio.run(run())
    Job.objects.filter(status="queued").update(status="cancelled")
    grown = during["Threads"] - before["Threads"]
    per_call = (during["VmRSS"] - before["VmRSS"]) / CALLS
    print(f"{CALLS} waiting A1111 txt2img calls (daphne):")
    print(f"  threads {before['Threads']} -> {during['Threads']}   +{grown}  (goal <= +5)")
    print(
        f"  memory {before['VmRSS'] / 1024:.0f} -> {during['VmRSS'] / 1024:.0f} MiB   "
        f"{per_call:.0f} KiB per waiting call"
    )


def member_sessions(count: int) -> list[tuple[int, str]]:
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth.hashers import make_password

    from accounts.models import User

    unusable = make_password(None)  # session log-ins only
    users = User.objects.bulk_create(
        [
            User(username=f"ws{i}", email=f"ws{i}@example.com", password=unusable)
            for i in range(count)
        ]
    )
    store = import_module(settings.SESSION_ENGINE).SessionStore
    sessions = []
    for user in User.objects.filter(pk__in=[u.pk for u in users]):
        session = store()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.create()
        sessions.append((user.pk, session.session_key))
    return sessions


def offered_rates() -> list[float]:
    """Total events a second over all sockets, one step each; the goal's rate is the last."""
    goal = RATE * SOCKETS
    return [goal * share for share in (0.1, 0.25, 0.5, 1.0)]


async def publish_step(ids: list[int], rate: float) -> tuple[int, float]:
    """PUBLISHERS processes share `ids` and `rate` for WS_SECONDS: (sent, their CPU seconds)."""
    shares = [ids[i::PUBLISHERS] for i in range(PUBLISHERS) if ids[i::PUBLISHERS]]
    start_at = time.time() + 1.5  # all publishers importing, then starting together
    publishers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "bench" / "ws_load.py"),
            "publish",
            json.dumps(share),
            str(rate / len(shares)),
            str(WS_SECONDS),
            str(start_at),
            stdout=asyncio.subprocess.PIPE,
        )
        for share in shares
    ]
    outputs = [(await p.communicate())[0].split() for p in publishers]
    if any(p.returncode for p in publishers):
        raise SystemExit("a publisher failed (its traceback is above)")
    return sum(int(out[0]) for out in outputs if out), sum(float(o[1]) for o in outputs if o)


async def drained(tally: Tally, sent: int, patience: float = 3.0) -> None:
    """Until every sent event arrived, or nothing more arrived for `patience` seconds."""
    last, quiet_since = -1, time.monotonic()
    while tally.received < sent and time.monotonic() - quiet_since < patience:
        if tally.received != last:
            last, quiet_since = tally.received, time.monotonic()
        await asyncio.sleep(0.1)


@dataclass
class WsStep:
    offered: float  # events/s asked of the publishers
    sent: int
    received: int
    seconds: float  # window: the publishers' run and the drain after it
    lag_p95: float
    daphne_cpu: float
    publishers_cpu: float
    receivers_cpu: float
    worst_socket: int
    idle_share: float = 0.0  # daphne's CPU share with the sockets open and nothing sent

    @property
    def us_per_event(self) -> float:
        busy = self.daphne_cpu - self.idle_share * self.seconds
        return max(busy, 0.0) / max(self.received, 1) * 1e6


async def idle_share_with_sockets(daphne: subprocess.Popen[bytes]) -> float:
    """Daphne's CPU share with every socket open and no event (pings, the layer's polls)."""
    await asyncio.sleep(2)  # the connects' work settles
    cpu, began = cpu_seconds(daphne.pid), time.monotonic()
    await asyncio.sleep(WS_IDLE_SECONDS)
    return (cpu_seconds(daphne.pid) - cpu) / (time.monotonic() - began)


async def measure_step(
    daphne: subprocess.Popen[bytes], ids: list[int], tally: Tally, rate: float, idle: float
) -> WsStep:
    tally.reset(len(ids))
    cpu = cpu_seconds(daphne.pid)
    own_cpu, began = time.process_time(), time.monotonic()
    sent, publishers_cpu = await publish_step(ids, rate)
    await drained(tally, sent)
    lags = sorted(tally.lags)
    return WsStep(
        offered=rate,
        sent=sent,
        received=tally.received,
        seconds=time.monotonic() - began,
        lag_p95=lags[int(len(lags) * 0.95)] if lags else float("nan"),
        daphne_cpu=cpu_seconds(daphne.pid) - cpu,
        publishers_cpu=publishers_cpu,
        receivers_cpu=time.process_time() - own_cpu,
        worst_socket=min(tally.per_socket),
        idle_share=idle,
    )


def print_ws_steps(idle: float, steps: list[WsStep]) -> None:
    layer = os.environ.get("CHANNEL_LAYER") or DEFAULT_CHANNEL_LAYER
    print(
        f"{SOCKETS} websockets, one daphne, channel layer {layer!r}, {PUBLISHERS} publisher "
        f"processes, {WS_SECONDS:.0f} s a step, events with a {PREVIEW_CHARS}-character preview:"
    )
    load = " / ".join(f"{n:.1f}" for n in os.getloadavg())
    print(f"  machine: {os.cpu_count()} cores, load average {load} (1 / 5 / 15 min) at the end")
    print(f"  daphne idle with the sockets open: {idle * 100:.2f} % of a core")
    print(
        "  offered/s  sent/due  recv/sent  lag p95  daphne CPU  us/event  "
        "publishers CPU  receivers CPU"
    )
    for step in steps:
        share = 100 / step.seconds  # CPU seconds -> % of a core over the step
        print(
            f"  {step.offered:9.0f}  {step.sent / (step.offered * WS_SECONDS):8.2f}"
            f"  {step.received / max(step.sent, 1):9.2f}  {step.lag_p95 * 1000:5.0f} ms"
            f"  {step.daphne_cpu * share:8.0f} %  {step.us_per_event:8.0f}"
            f"  {step.publishers_cpu * share:12.0f} %  {step.receivers_cpu * share:11.0f} %"
        )
    goal = steps[-1]
    delivered = goal.received / max(goal.sent, 1)
    print(f"  at the goal's {goal.offered:.0f} events/s:")
    print(f"    received / sent (daphne)       {vs_goal(delivered, '>= 0.95')}")
    print(f"    lag p95                        {goal.lag_p95 * 1000:.0f} ms  (goal < 1000 ms)")
    print(f"    worst socket got {goal.worst_socket / (RATE * WS_SECONDS):.2f} of its due events")
    # Per-event cost at the highest rate daphne kept up with: a saturated step's figure
    # counts only the events it managed to read, at the cost of a starved process.
    kept_up = [s for s in steps if s.received >= 0.95 * s.sent]
    basis = kept_up[-1] if kept_up else steps[0]
    which = "the highest rate fully delivered" if kept_up else "none fully delivered; lowest"
    saturation = 1e6 / max(basis.us_per_event, 1e-9)
    print(
        f"    daphne CPU per delivered event {basis.us_per_event:.0f} us (at {basis.offered:.0f}/s,"
        f" {which}): one process fills one core at ~{saturation:,.0f} events/s"
    )
    print(
        f"    one core's capacity / the goal's rate  {vs_goal(saturation / goal.offered, '>= 1')}"
    )


def websockets(port: int, daphne: subprocess.Popen[bytes]) -> None:
    sessions = member_sessions(SOCKETS)
    ids = [pk for pk, _key in sessions]

    async def run() -> tuple[float, list[WsStep]]:
        tally = Tally()
        sockets = await open_sockets(port, [key for _pk, key in sessions], tally)
        try:
            idle = await idle_share_with_sockets(daphne)
            steps = [await measure_step(daphne, ids, tally, r, idle) for r in offered_rates()]
            return idle, steps
        finally:
            for sock in sockets:
                sock.close()

    idle, steps = asyncio.run(run())
    print_ws_steps(idle, steps)


def idle_and_waiting(
    procs: dict[str, subprocess.Popen[bytes]], port: int, token: str, worker_id: str
) -> None:
    import redis

    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    wait_until(lambda: client.exists(f"atelier:worker:{worker_id}"), 120, "the GPU worker")
    idle_cost(procs)
    gpu = procs.pop("GPU worker")
    gpu.terminate()
    gpu.wait(timeout=60)
    waiting_calls(procs["web (daphne)"], port, token)


def main() -> int:
    if not os.environ.get("REDIS_URL"):
        print(NEEDS_REDIS)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="atelier-bench-idle-"))
    setup_django(tmp)
    from gpu_worker.demo_model import make_demo_models

    make_demo_models(tmp / "models")
    from generation.catalogue_sync import sync_catalogue

    sync_catalogue(models_dir=tmp / "models", include_workers=False)
    [token] = make_users(1)
    env = dict(os.environ)
    port = free_port()
    python = sys.executable
    worker_id = "bench-" + uuid.uuid4().hex[:6]
    procs = {
        "web (daphne)": start(
            [python, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            env,
        ),
        "platform worker": start([python, "manage.py", "run_platform_worker"], env),
    }
    if not WEBSOCKETS_ONLY:
        procs["GPU worker"] = start(gpu_worker_args(tmp / "models", worker_id, tmp / "cache"), env)
    try:
        wait_until(lambda: Api(port, token).call("GET", "/api/v1/me/")[0] == 200, 30, "the web")
        if not WEBSOCKETS_ONLY:
            idle_and_waiting(procs, port, token, worker_id)
        websockets(port, procs["web (daphne)"])
    finally:
        stop(procs.values())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
