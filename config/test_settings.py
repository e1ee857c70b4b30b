"""Settings for the test suite: the real ones, made fast and kept out of developer data."""

import tempfile
from pathlib import Path

from config.settings import *  # noqa: F403

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
