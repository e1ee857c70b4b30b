"""Models a worker fetches from the platform by sha256: a disk cache with its own size budget.

A job names a member's model with a ModelDelivery (sha256 + short-lived signed URL). The file is
streamed to a temporary name while hashed, kept only if the hash matches, then named
`<sha256>.safetensors`. The least recently used files go when the budget (`--disk-budget`)
would be passed; files the current job needs are never evicted for it. Django-free, torch-free:
plain HTTP with the standard library.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from gpu_worker.catalogue import CatalogueItem
from gpu_worker.model_files import (
    UnreadableModel,
    detect_family_from_header,
    read_safetensors_header,
)
from gpu_worker.protocol import DEFAULT_DOWNLOAD_BYTES_PER_S, ModelDelivery

log = logging.getLogger(__name__)

BLOCK_BYTES = 1 << 20
FETCH_TIMEOUT_SECONDS = 60
# Fetches smaller than this are mostly latency: they do not change the measured rate.
MIN_MEASURED_BYTES = 16 * 2**20


class ModelFetchError(RuntimeError):
    """A model could not be fetched or failed its hash check (the job fails with this)."""


class DownloadCache:
    def __init__(
        self,
        root: Path | str,
        budget_bytes: int,
        bytes_per_s: float = DEFAULT_DOWNLOAD_BYTES_PER_S,
    ) -> None:
        self.root = Path(root)
        self.budget_bytes = budget_bytes
        # The fetch rate the heartbeat reports: configured, then the average of real fetches.
        self.bytes_per_s = float(bytes_per_s)
        self.root.mkdir(parents=True, exist_ok=True)

    def measured(self, size: int, seconds: float) -> None:
        """Fold one fetch into the rate (a moving average; small fetches are ignored)."""
        if size >= MIN_MEASURED_BYTES and seconds > 0:
            self.bytes_per_s = 0.5 * self.bytes_per_s + 0.5 * (size / seconds)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ModelFetchError("not a sha256")
        return self.root / f"{sha256}.safetensors"

    def files(self) -> list[Path]:
        """Cached files, most recently used first."""
        found = [p for p in self.root.glob("*.safetensors") if p.is_file()]
        return sorted(found, key=lambda p: p.stat().st_mtime_ns, reverse=True)

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def shas(self) -> list[str]:
        return [p.stem for p in self.files()]

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def fetch_all(self, deliveries: list[ModelDelivery]) -> dict[tuple[str, str], CatalogueItem]:
        """Each delivery as a catalogue item on local disk, fetching what is missing."""
        keep = {d["sha256"] for d in deliveries}
        return {(d["kind"], d["name"]): self.fetch(d, keep=keep) for d in deliveries}

    def fetch(self, delivery: ModelDelivery, keep: set[str] | None = None) -> CatalogueItem:
        sha256 = delivery["sha256"]
        path = self.path_for(sha256)
        if path.is_file():
            os.utime(path)  # the LRU clock
        else:
            self._download(delivery, path, keep or {sha256})
        try:
            family, architecture = detect_family_from_header(
                read_safetensors_header(path), delivery["kind"]
            )
        except UnreadableModel as exc:
            path.unlink(missing_ok=True)
            raise ModelFetchError(
                f"fetched {delivery['kind']} {delivery['name']!r}: {exc}"
            ) from exc
        return CatalogueItem(
            name=delivery["name"],
            kind=delivery["kind"],
            path=path,
            filename=f"{delivery['name']}.safetensors",
            family=family,
            architecture=architecture,
            size_bytes=path.stat().st_size,
            sha256=sha256,
        )

    def _download(self, delivery: ModelDelivery, path: Path, keep: set[str]) -> None:
        size = int(delivery["size_bytes"])
        label = f"{delivery['kind']} {delivery['name']!r}"
        if size > self.budget_bytes:
            raise ModelFetchError(f"{label} is larger than this worker's disk budget")
        self.make_room(size, keep)
        digest = hashlib.sha256()
        started = time.monotonic()
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".fetch-", suffix=".part")
        try:
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(  # noqa: S310 - our URL
                    delivery["url"], timeout=FETCH_TIMEOUT_SECONDS
                ) as response,
            ):
                while block := response.read(BLOCK_BYTES):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != delivery["sha256"]:
                raise ModelFetchError(f"{label}: the fetched file does not match its sha256")
            os.replace(name, path)
            self.measured(size, time.monotonic() - started)
        except (urllib.error.URLError, OSError) as exc:
            raise ModelFetchError(f"cannot fetch {label}: {exc}") from exc
        finally:
            Path(name).unlink(missing_ok=True)
        log.info("fetched %s (%s, %d bytes)", label, delivery["sha256"][:10], size)

    def make_room(self, size: int, keep: set[str]) -> list[str]:
        """Evict least recently used files until `size` more bytes fit the budget."""
        evicted: list[str] = []
        files = self.files()
        used = sum(p.stat().st_size for p in files)
        for path in reversed(files):  # least recent first
            if used + size <= self.budget_bytes:
                break
            if path.stem in keep:
                continue
            used -= path.stat().st_size
            path.unlink(missing_ok=True)
            evicted.append(path.stem)
        return evicted

    def evict(self, sha256: str) -> bool:
        path = self.path_for(sha256)
        existed = path.is_file()
        path.unlink(missing_ok=True)
        return existed
