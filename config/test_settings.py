"""Settings for the test suite: the real ones, made fast and kept out of developer data."""

import tempfile
from pathlib import Path

from config.settings import *  # noqa: F403

# Hashing passwords with Argon2 is slow on purpose; tests create many users.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
MEDIA_ROOT = Path(tempfile.mkdtemp(prefix="atelier-test-media-"))
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
