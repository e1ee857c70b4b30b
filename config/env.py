"""Strict, typed readers for settings that come from the environment.

A typo in a deployment variable should stop the process at start-up with a clear message,
not silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import overload


class ImproperEnvironment(ValueError):
    pass


@overload
def env_str(name: str, default: str) -> str: ...
@overload
def env_str(name: str, default: None = None) -> str | None: ...
def env_str(name: str, default: str | None = None) -> str | None:
    """A string from NAME, or from the file named by NAME_FILE (Docker/Kubernetes secrets)."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ImproperEnvironment(f"{name} must be 'true' or 'false', got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperEnvironment(f"{name} must be an integer, got {raw!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_networks(name: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated addresses or CIDR networks (`10.0.0.5, 172.16.0.0/12, ::1`); any entry
    that is neither stops start-up."""
    networks = []
    for item in env_list(name, []):
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            raise ImproperEnvironment(
                f"{name} must list IP addresses or networks (CIDR), got {item!r}"
            ) from None
    return networks


def development_secret_key(var_dir: Path) -> str:
    """A secret generated once per checkout and kept in var/ (git-ignored), for development only."""
    from django.core.management.utils import get_random_secret_key

    key_file = var_dir / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    var_dir.mkdir(parents=True, exist_ok=True)
    key = get_random_secret_key()
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


def env_matching(name: str, default: str, pattern: str, example: str) -> str:
    """A string that must match `pattern` whole (a rate such as '10/hour'): a typo stops the
    process at start-up instead of at the first request that reads it."""
    value = env_str(name, default) or default
    if not re.fullmatch(pattern, value):
        raise ImproperEnvironment(f"{name} must look like {example!r}, got {value!r}")
    return value
