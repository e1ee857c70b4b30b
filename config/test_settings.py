"""Settings for the test suite: the real ones, made fast and kept out of developer data."""

import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def _redis_url_of_this_xdist_worker() -> None:
    """Under pytest-xdist (`make test` runs on every core) each worker gets its own Redis
    database, since tests empty theirs (FLUSHDB): worker gw<i> uses db N+i of
    REDIS_URL=redis://.../N. Set in the environment before the settings read it, so that the
    processes a test starts inherit it; they see the shifted URL, not the base, and keep it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not os.environ.get("REDIS_URL"):
        return
    base = os.environ.setdefault("ATELIER_TEST_REDIS_BASE_URL", os.environ["REDIS_URL"])
    if os.environ["REDIS_URL"] != base:  # a process a test started: already this worker's own
        return
    parts = urlsplit(base)
    db = int(parts.path.strip("/") or 0) + int(worker[2:])
    if db > 15:
        raise RuntimeError(f"{base} + xdist worker {worker}: Redis has databases 0-15 only")
    os.environ["REDIS_URL"] = urlunsplit(parts._replace(path=f"/{db}"))


_redis_url_of_this_xdist_worker()

from config.settings import *  # noqa: E402, F403

# Hashing passwords with Argon2 is slow on purpose; tests create many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
MEDIA_ROOT = Path(tempfile.mkdtemp(prefix="atelier-test-media-"))
MODEL_STORE_DIR = Path(tempfile.mkdtemp(prefix="atelier-test-model-store-"))
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    # A file, not Django's shared-cache memory database: tests that run a Dramatiq worker or a
    # live server in another thread would otherwise hit "database table is locked".
    DATABASES["default"]["TEST"] = {  # noqa: F405
        "NAME": str(Path(tempfile.mkdtemp(prefix="atelier-test-db-")) / "test.sqlite3")
    }
