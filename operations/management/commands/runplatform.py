"""`python manage.py runplatform`: the whole platform on one machine, for a first run.

Starts (or finds) Redis, migrates, makes the demo model when no checkpoint is present, then runs
every process under honcho: daphne (HTTP + websockets), the platform worker and one GPU worker.
Ctrl-C stops them all, and the private Redis with them.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser
from honcho.manager import Manager

from operations.redis_server import PrivateRedis, redis_answers, start_private_redis


def process_list(python: str, host: str, port: int) -> dict[str, str]:
    """The platform's processes; platform/Procfile lists the same for those who run honcho."""
    return {
        "web": f"{python} -m config.daphne_server -b {host} -p {port} config.asgi:application",
        "platform": f"{python} manage.py run_platform_worker",
        "gpu": f"{python} -m gpu_worker",
    }


def checkpoints_present(models_dir: Path) -> bool:
    folder = models_dir / "Stable-diffusion"
    return folder.is_dir() and any(
        p.suffix == ".safetensors" or p.is_dir() for p in folder.iterdir()
    )


def first_superuser_hint(host: str, port: int) -> str | None:
    """How to make the first admin account, while there is none (after migrate)."""
    from django.contrib.auth import get_user_model

    if get_user_model()._default_manager.filter(is_superuser=True, is_active=True).exists():
        return None
    command = shlex.join([".venv/bin/python", "manage.py", "createsuperuser"])
    return (
        f"No admin account yet. Make one with: {command}\n"
        f"then sign in at http://{host}:{port}/admin/ (members, models, jobs) "
        f"and http://{host}:{port}/ops/ (operations)."
    )


class Command(BaseCommand):
    help = "Run Atelier on this machine: Redis, web (daphne), platform worker and a GPU worker."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--redis-port",
            type=int,
            default=6390,
            help="port for the private Redis started when REDIS_URL is not set",
        )
        parser.add_argument(
            "--no-gpu-worker",
            action="store_true",
            help="run only web and platform worker (GPU workers run elsewhere)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        python = sys.executable
        env = dict(os.environ)
        private: PrivateRedis | None = None
        redis_url = os.environ.get("REDIS_URL")
        if redis_url:
            if not redis_answers(redis_url, timeout=2):
                self.stderr.write(f"REDIS_URL={redis_url} does not answer.")
                sys.exit(1)
        else:
            candidate = f"redis://127.0.0.1:{options['redis_port']}/0"
            if redis_answers(candidate):
                redis_url = candidate  # our own Redis from an earlier run is still up
            else:
                private = start_private_redis(
                    settings.VAR_DIR / "redis", port=options["redis_port"]
                )
                redis_url = private.url
                self.stdout.write(f"Started a private Redis at {redis_url}")
        env["REDIS_URL"] = redis_url
        env.setdefault("MODELS_DIR", str(settings.MODELS_DIR))
        env.setdefault("PYTHONUNBUFFERED", "1")

        try:
            call_command("migrate", interactive=False, verbosity=0)
            if not options["no_gpu_worker"] and not checkpoints_present(settings.MODELS_DIR):
                self.stdout.write("No checkpoint in models/: making the small demo model.")
                self._run(
                    [
                        python,
                        "-m",
                        "gpu_worker",
                        "make-demo-model",
                        "--models-dir",
                        str(settings.MODELS_DIR),
                    ],
                    env,
                )
            self._announce(options["host"], options["port"])
            manager = Manager()
            for name, command in process_list(python, options["host"], options["port"]).items():
                if name == "gpu" and options["no_gpu_worker"]:
                    continue
                manager.add_process(name, command, env=env, cwd=str(settings.BASE_DIR))
            manager.loop()
            sys.exit(manager.returncode or 0)
        finally:
            if private:
                private.stop()

    def _run(self, argv: list[str], env: dict[str, str]) -> None:
        import subprocess

        subprocess.run(argv, env=env, check=True, cwd=settings.BASE_DIR)  # noqa: S603

    def _announce(self, host: str, port: int) -> None:
        self.stdout.write(
            self.style.SUCCESS(f"Atelier is starting at http://{host}:{port}/ (Ctrl-C stops it)")
        )
        hint = first_superuser_hint(host, port)
        if hint:
            self.stdout.write(self.style.WARNING(hint))
