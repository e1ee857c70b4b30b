"""Sending a file the worker made (a merged model) back to the platform. Stdlib only.

The platform gives the job a signed upload URL. The file goes in chunks, each one request that
fits the web's body limit: `PUT` with `Upload-Offset` (where this chunk starts), `Upload-Length`
(the whole file) and `Upload-Sha256`. The platform appends a chunk only at the offset it holds,
answers 409 with its own offset otherwise (the worker resumes from there), and after the last
byte checks the whole file's sha256 before it keeps it. No shared disk, no credentials: the
signature is the permission, for this job's attempt only.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path

from gpu_worker.protocol import MergedModel

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
TIMEOUT_SECONDS = 120
MAX_RESUMES = 5


class UploadError(RuntimeError):
    """The platform refused or could not be reached (the job fails with this)."""


def _put(url: str, body: bytes, offset: int, model: MergedModel) -> tuple[int, int]:
    """One chunk; returns (HTTP status, the platform's offset after it)."""
    request = urllib.request.Request(  # noqa: S310 - our platform's URL
        url,
        data=body,
        method="PUT",
        headers={
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(offset),
            "Upload-Length": str(model["size_bytes"]),
            "Upload-Sha256": model["sha256"],
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            return response.status, int(response.headers.get("Upload-Offset") or 0)
    except urllib.error.HTTPError as exc:
        if exc.code == 409:
            return 409, int(exc.headers.get("Upload-Offset") or 0)
        detail = exc.read()[:300].decode(errors="replace")
        raise UploadError(f"HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise UploadError(str(exc)) from exc


def upload_file(url: str, path: Path, model: MergedModel, chunk_bytes: int | None = None) -> None:
    """Send the file in chunks from wherever the platform says it stands."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    size = model["size_bytes"]
    offset, resumes = 0, 0
    with path.open("rb") as fh:
        while True:
            fh.seek(offset)
            body = fh.read(min(chunk_bytes, size - offset))
            status, offset = _put(url, body, offset, model)
            if status == 409:
                resumes += 1
                if resumes > MAX_RESUMES:
                    raise UploadError("the platform keeps refusing the upload's offset")
                continue
            if status == 201:
                log.info("uploaded %s (%d bytes)", model["sha256"][:10], size)
                return
            if offset >= size:
                raise UploadError("the platform took every byte but did not keep the file")
