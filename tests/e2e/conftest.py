"""The live platform for browser tests: real processes on loopback, sharing one fresh database.

pytest-django's test database lives inside the pytest process, where subprocesses cannot see it,
so this fixture migrates its own SQLite file and hands every process the same environment:
daphne (HTTP + websockets), the platform worker and a GPU worker with the demo models.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LivePlatform:
    base_url: str
    logs_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # what the processes run with

    def manage(self, *argv: str) -> None:
        """A management command against the live platform's database."""
        subprocess.run(
            [sys.executable, "manage.py", *argv], cwd=REPO, env=self.env, check=True, timeout=120
        )

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for log in sorted(self.logs_dir.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"---- {log.name} ----\n" + "\n".join(text))
        return "\n".join(out)

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}\n{self.log_tail()}")


def _wait_http(url: str, platform: LivePlatform, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        platform.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {timeout}s\n{platform.log_tail()}")


@pytest.fixture(scope="session")
def live_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePlatform]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        pytest.fail("REDIS_URL is not set: run under `python -m operations.with_redis`")

    root = tmp_path_factory.mktemp("live")
    logs = root / "logs"
    logs.mkdir()
    models = root / "models"
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "ATELIER_MODE": "development",
        "DEBUG": "true",
        "DATABASE_URL": f"sqlite:///{root / 'atelier.sqlite3'}",
        "ATELIER_VAR_DIR": str(root / "var"),
        "MEDIA_ROOT": str(root / "media"),
        "MODELS_DIR": str(models),
        "REDIS_URL": redis_url,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        "AXES_ENABLED": "false",
        # Every browser test signs up from 127.0.0.1: the default 5 per hour would refuse the 6th.
        "SIGNUP_RATE_LIMIT": "1000/h/ip",
    }
    python = sys.executable

    def run(*argv: str) -> None:
        subprocess.run([python, *argv], cwd=REPO, env=env, check=True, timeout=300)

    # The Redis is shared with other tests: start from empty queues.
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    run("manage.py", "migrate", "--no-input", "-v", "0")
    run("-m", "gpu_worker", "make-demo-model", "--models-dir", str(models))

    platform = LivePlatform(base_url=f"http://127.0.0.1:{port}", logs_dir=logs, env=env)
    commands = {
        "web": [
            python,
            "-m",
            "config.daphne_server",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "config.asgi:application",
        ],
        "platform": [python, "manage.py", "run_platform_worker"],
        "gpu": [python, "-m", "gpu_worker", "--models-dir", str(models), "--device", "cpu"],
    }
    try:
        for name, argv in commands.items():
            log = (logs / f"{name}.log").open("w")
            platform.processes[name] = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_http(platform.base_url + "/healthz", platform, timeout=60)
        yield platform
    finally:
        for proc in platform.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in platform.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print(platform.log_tail(60))
        shutil.rmtree(root / "media", ignore_errors=True)


# Module scope: Playwright's sync API keeps an event loop running in the main thread while it
# is open, which would break later tests that call asyncio.run().
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextmanager
def signed_in_page(user, base_url: str) -> Iterator:
    """A page in chromium with `user` signed in to the live server at `base_url`. Playwright's
    sync API runs an event loop in this thread while open (Django then refuses ORM calls
    here): the session is made before it starts, and every database step of the test goes
    before or after the `with`."""
    from django.test import Client
    from playwright.sync_api import sync_playwright

    session = Client()
    session.force_login(user)
    session_id = session.cookies["sessionid"].value
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context()
        context.add_cookies([{"name": "sessionid", "value": session_id, "url": base_url}])
        try:
            yield context.new_page()
        finally:
            browser.close()
