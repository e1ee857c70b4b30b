"""The web server as the Procfile starts it (config.daphne_server): a body over the limit is
refused before daphne copies it into memory, declared or streamed; the rest is served as by
daphne (issue 14, item 5)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from operations.redis_server import free_port
from tests.platform.test_run_command import wait_for_ok

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[tuple[int, int]]:
    """A live server with a 1 MiB limit: (port, pid)."""
    tmp = tmp_path_factory.mktemp("web")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    env.update(
        ATELIER_VAR_DIR=str(tmp / "var"),
        DATABASE_URL=f"sqlite:///{tmp / 'web.sqlite3'}",
        MAX_REQUEST_BODY_MB="1",
    )
    argv = [sys.executable, "-m", "config.daphne_server", "-b", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(
        [*argv, "config.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for_ok(f"http://127.0.0.1:{port}/healthz", process, timeout=60)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


def peak_rss_mib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) // 1024


def post(port: int, path: str, size: int, chunked: bool = False) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("POST", path)
    connection.putheader("Content-Type", "application/json")
    if chunked:
        connection.putheader("Transfer-Encoding", "chunked")
    else:
        connection.putheader("Content-Length", str(size))
    connection.endheaders()
    piece = b"x" * MIB
    for start in range(0, size, MIB):
        data = piece[: min(MIB, size - start)]
        connection.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
    if chunked:
        connection.send(b"0\r\n\r\n")
    response = connection.getresponse()
    return response.status, response.getheader("Content-Type") or "", response.read()


def test_a_huge_declared_body_is_a_json_413_and_never_lands_in_memory(web):
    port, pid = web
    before = peak_rss_mib(pid)
    status, content_type, body = post(port, "/sdapi/v1/txt2img", 64 * MIB)
    assert status == 413 and content_type == "application/json"
    assert json.loads(body)["limit"] == MIB
    assert peak_rss_mib(pid) - before < 16  # plain daphne grows by the whole 64 MiB


def test_a_streamed_body_over_the_limit_is_refused_too(web):
    port, _pid = web
    status, content_type, _body = post(port, "/accounts/stripe/webhook/", 3 * MIB, chunked=True)
    assert status == 413 and content_type.startswith("text/plain")


def test_a_body_under_the_limit_reaches_the_application(web):
    port, _pid = web
    status, content_type, body = post(port, "/sdapi/v1/png-info", 1000)
    assert status == 401 and json.loads(body)["error"] == "Unauthorized"
