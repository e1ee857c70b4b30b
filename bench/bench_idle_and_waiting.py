"""Idle and waiting cost: CPU of idle processes, 500 waiting A1111 calls, 1,000 websockets.

    python -m operations.with_redis -- python bench/bench_idle_and_waiting.py [--quick]

The real processes on loopback, SQLite in a temporary folder (as bench_platform_overhead):
daphne, the platform worker and one GPU worker (CPU, demo model preloaded).

  idle        each process's CPU over IDLE_SECONDS (30; 10 with --quick) with nothing to do,
              as % of one core (goal < 1 % each)
  waiting     CALLS (500) concurrent A1111 `txt2img` calls held waiting (the GPU worker stopped
              first, so their jobs wait): daphne's thread count and memory before and with them
              all waiting (goal: threads flat, within +5; memory per waiting call printed)
  websockets  SOCKETS (1,000) websockets of as many members on /ws/jobs/, each member's group
              sent RATE (10) progress events a second for WS_SECONDS over the channel layer
              by PUBLISHERS (4) separate processes, each for its share of the members (as
              several GPU workers publish): what the publishers managed against what was due,
              what the sockets received against what was really sent (daphne's share), the
              delivery lag p95 and daphne's CPU over the window (goal: received / sent >= 0.95,
              lag p95 < 1 s). A daphne near 100 % of a core is the limit; a publisher or
              receiver short of CPU shows as sent / due below 1 or as lag with daphne idle.
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

ROOT = Path(__file__).resolve().parents[1]
QUICK = "--quick" in sys.argv
IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "10" if QUICK else "30"))
CALLS = int(os.environ.get("BENCH_CALLS", "500"))
SOCKETS = int(os.environ.get("BENCH_SOCKETS", "1000"))
RATE = float(os.environ.get("BENCH_WS_RATE", "10"))
PUBLISHERS = int(os.environ.get("BENCH_PUBLISHERS", "4"))
WS_SECONDS = float(os.environ.get("BENCH_WS_SECONDS", "5" if QUICK else "10"))


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


PUBLISHER = """
import asyncio, json, os, sys, time
from channels_redis.core import RedisChannelLayer
ids = json.loads(sys.argv[1]); rate = float(sys.argv[2]); seconds = float(sys.argv[3])
async def main():
    layer = RedisChannelLayer(hosts=[{"address": os.environ["REDIS_URL"], "socket_timeout": None}])
    start = time.monotonic(); tick = 0; sent_count = 0
    while time.monotonic() - start < seconds:
        due = start + tick / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        sent = time.time()
        for first in range(0, len(ids), 50):  # within the layer's connection pool
            await asyncio.gather(*(layer.group_send(f"jobs.user.{i}", {
                "type": "job.progress", "job_id": "bench", "step": tick, "steps": 0,
                "eta": sent, "preview": ""}) for i in ids[first:first + 50]))
            sent_count += len(ids[first:first + 50])
        tick += 1
    print(sent_count, flush=True)  # group_sends done (due: rate x seconds per member)
asyncio.run(main())
"""


def websockets(port: int, daphne: subprocess.Popen[bytes]) -> None:
    import aiohttp

    sessions = member_sessions(SOCKETS)

    async def run() -> tuple[list[int], list[float], int, float]:
        counts = [0] * len(sessions)
        lags: list[float] = []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            sockets = []
            for _pk, key in sessions:
                ws = await http.ws_connect(
                    f"http://127.0.0.1:{port}/ws/jobs/",
                    headers={"Cookie": f"sessionid={key}", "Origin": f"http://127.0.0.1:{port}"},
                )
                sockets.append(ws)

            async def listen(index: int, ws: Any) -> None:
                async for message in ws:
                    event = json.loads(message.data)
                    if event.get("type") == "job.progress":
                        counts[index] += 1
                        lags.append(time.time() - float(event["eta"]))

            listeners = [asyncio.create_task(listen(i, ws)) for i, ws in enumerate(sockets)]
            ids = [pk for pk, _ in sessions]
            shares = [ids[i::PUBLISHERS] for i in range(PUBLISHERS)]
            cpu_before, wall_before = cpu_seconds(daphne.pid), time.monotonic()
            publishers = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    PUBLISHER,
                    json.dumps(share),
                    str(RATE),
                    str(WS_SECONDS),
                    stdout=asyncio.subprocess.PIPE,
                )
                for share in shares
                if share
            ]
            outputs = [await p.communicate() for p in publishers]
            await asyncio.sleep(2)  # what is still in flight arrives
            daphne_share = (cpu_seconds(daphne.pid) - cpu_before) / (time.monotonic() - wall_before)
            for task in listeners:
                task.cancel()
            for ws in sockets:
                await ws.close()
        sent = sum(int(out.split()[-1]) for out, _err in outputs if out.split())
        return counts, lags, sent, daphne_share

    counts, lags, sent, daphne_share = asyncio.run(run())
    due = RATE * WS_SECONDS * len(sessions)
    received = sum(counts)
    lags.sort()
    lag95 = lags[int(len(lags) * 0.95)] if lags else float("nan")
    print(
        f"{SOCKETS} websockets, {RATE:g} events/s each for {WS_SECONDS:.0f} s "
        f"(one daphne, {PUBLISHERS} publisher processes):"
    )
    print(f"  sent / due (publishers)          ratio {sent / due:.2f}")
    print(f"  received / sent (daphne)         {vs_goal(received / max(sent, 1), '>= 0.95')}")
    print(
        f"  received / due {received / due:.2f}; worst socket "
        f"{min(counts) / (RATE * WS_SECONDS):.2f}; delivery lag p95 {lag95 * 1000:.0f} ms; "
        f"daphne CPU {daphne_share * 100:.0f} % of a core"
    )


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
        "GPU worker": start(gpu_worker_args(tmp / "models", worker_id, tmp / "cache"), env),
    }
    try:
        import redis

        client = redis.Redis.from_url(env["REDIS_URL"])
        wait_until(lambda: Api(port, token).call("GET", "/api/v1/me/")[0] == 200, 30, "the web")
        wait_until(lambda: client.exists(f"atelier:worker:{worker_id}"), 120, "the GPU worker")
        idle_cost(procs)
        gpu = procs.pop("GPU worker")
        gpu.terminate()
        gpu.wait(timeout=60)
        waiting_calls(procs["web (daphne)"], port, token)
        websockets(port, procs["web (daphne)"])
    finally:
        stop(procs.values())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
