"""Operators' commands to GPU workers (drain, undrain, unload a model), picked up by the worker.

What the workers report (their heartbeats, live / stale / gone) is read by `generation.fleet`.
"""

from __future__ import annotations

import json

import redis

from gpu_worker.protocol import WORKER_COMMANDS_KEY, WorkerCommand


def send_worker_command(client: redis.Redis, worker_id: str, command: WorkerCommand) -> None:
    """Queue an operator's request (drain, unload a model) for the worker to pick up."""
    key = WORKER_COMMANDS_KEY.format(worker_id=worker_id)
    client.rpush(key, json.dumps(command))
    client.expire(key, 3600)
