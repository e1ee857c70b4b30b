"""Run a command with a Redis available: `python -m operations.with_redis -- CMD ARGS...`.

If REDIS_URL is set it is used as it is. Otherwise a private redis-server is started for the
command's lifetime (nothing saved, its own port) and its URL is exported as REDIS_URL. The test
suite runs under this so that it never touches a developer's own Redis data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from operations.redis_server import redis_answers, start_private_redis


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python -m operations.with_redis -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    env = dict(os.environ)
    private = None
    if env.get("REDIS_URL"):
        if not redis_answers(env["REDIS_URL"], timeout=2):
            print(f"REDIS_URL={env['REDIS_URL']} does not answer", file=sys.stderr)
            return 1
    else:
        private = start_private_redis(Path(env.get("ATELIER_VAR_DIR", "var")) / "redis-test")
        env["REDIS_URL"] = private.url
    try:
        return subprocess.call(argv, env=env)  # noqa: S603 - the developer's own command
    finally:
        if private:
            private.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
