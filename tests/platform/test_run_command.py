"""The README's run command brings the whole platform up, serves pages, and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from operations.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_for_ok(url: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    return False


@pytest.fixture
def platform_process(tmp_path, redis_url):
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")
    }
    env.update(
        ATELIER_VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'run.sqlite3'}",
        MODELS_DIR=str(tmp_path / "models"),
        MEDIA_ROOT=str(tmp_path / "media"),
        REDIS_URL=redis_url,
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runplatform", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    yield process, port, tmp_path
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


def test_run_command_serves_the_site_and_stops_on_ctrl_c(platform_process):
    process, port, tmp_path = platform_process
    up = wait_for_ok(f"http://127.0.0.1:{port}/accounts/signup/", process, timeout=90)
    if not up:
        process.kill()
        pytest.fail(
            "platform did not come up:\n" + (process.stdout.read() if process.stdout else "")
        )
    assert wait_for_ok(f"http://127.0.0.1:{port}/healthz", process, timeout=5)
    # The demo model was made because models/ was empty.
    assert any((tmp_path / "models" / "Stable-diffusion").iterdir())

    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0 or "web" in output, output
    for name in ("web", "platform", "gpu"):
        assert f"{name}." in output or f"{name} " in output, f"{name} never started:\n{output}"
    assert "Atelier is starting at" in output
