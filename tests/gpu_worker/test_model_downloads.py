"""The worker's disk cache of fetched models: hash-checked, within its budget, LRU."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Iterator

import pytest

from gpu_worker.model_downloads import DownloadCache, ModelFetchError
from gpu_worker.protocol import ModelDelivery
from tests.model_file_builder import safetensors_bytes

FILES: dict[str, bytes] = {}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        data = FILES.get(self.path.strip("/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def embedding(tokens: int) -> bytes:
    return safetensors_bytes({"emb_params": ("F32", [tokens, 768])})


def offer(server: str, name: str, data: bytes, sha256: str | None = None) -> ModelDelivery:
    digest = hashlib.sha256(data).hexdigest()
    FILES[digest] = data
    return ModelDelivery(
        kind="embedding",
        name=name,
        sha256=sha256 or digest,
        size_bytes=len(data),
        url=f"{server}/{digest}",
    )


def test_a_missing_model_is_fetched_checked_and_kept_under_its_hash(server, tmp_path):
    cache = DownloadCache(tmp_path, budget_bytes=1 << 20)
    delivery = offer(server, "mine", embedding(2))
    item = cache.fetch(delivery)
    assert item.path == tmp_path / f"{delivery['sha256']}.safetensors"
    assert (item.name, item.kind, item.family) == ("mine", "embedding", "sd1")
    assert cache.shas() == [delivery["sha256"]]
    FILES.clear()  # a second job finds it on disk: no request made
    assert cache.fetch(delivery).path == item.path


def test_a_file_whose_hash_does_not_match_is_refused_and_not_kept(server, tmp_path):
    cache = DownloadCache(tmp_path, budget_bytes=1 << 20)
    lie = offer(server, "mine", embedding(2), sha256="0" * 64)
    with pytest.raises(ModelFetchError, match="does not match its sha256"):
        cache.fetch(lie)
    assert os.listdir(tmp_path) == []


def test_the_least_recently_used_file_goes_when_the_budget_is_full(server, tmp_path):
    one, two, three = (offer(server, f"e{i}", embedding(i)) for i in (1, 2, 3))
    size = one["size_bytes"] + two["size_bytes"] + 16
    cache = DownloadCache(tmp_path, budget_bytes=size + three["size_bytes"] - one["size_bytes"])
    cache.fetch(one)
    cache.fetch(two)
    os.utime(cache.path_for(one["sha256"]), (1, 1))  # one used long ago
    cache.fetch(three)
    assert set(cache.shas()) == {two["sha256"], three["sha256"]}
    assert cache.used_bytes() <= cache.budget_bytes


def test_a_model_larger_than_the_budget_is_refused_and_evict_deletes(server, tmp_path):
    cache = DownloadCache(tmp_path, budget_bytes=100)
    with pytest.raises(ModelFetchError, match="disk budget"):
        cache.fetch(offer(server, "big", embedding(4)))
    cache = DownloadCache(tmp_path, budget_bytes=1 << 20)
    delivery = offer(server, "mine", embedding(2))
    cache.fetch(delivery)
    assert cache.evict(delivery["sha256"]) and cache.shas() == []


def test_the_fetch_rate_starts_as_configured_and_follows_real_fetches(tmp_path):
    cache = DownloadCache(tmp_path, budget_bytes=1 << 30, bytes_per_s=100 * 2**20)
    cache.measured(1 << 20, 10.0)  # a small fetch is mostly latency: ignored
    assert cache.bytes_per_s == 100 * 2**20
    cache.measured(64 * 2**20, 2.0)  # 32 MiB/s measured
    assert cache.bytes_per_s == (100 + 32) / 2 * 2**20
