"""daphne, refusing an oversized request body before copying it into memory.

daphne receives a whole request first (Twisted spools a large body to a temporary file), then
puts all of its body into the application's queue, in memory, before the application runs: the
ASGI-level limit (config/body_limit.py) answers 413 but only after that copy, so one 300 MiB POST
grew the web process by 300 MiB. This server answers the same 413 from the body's size as
received, before the copy. Started exactly like daphne:

    python -m config.daphne_server -b 0.0.0.0 -p 8000 config.asgi:application
"""

from __future__ import annotations

import os
from typing import Any

from daphne.cli import CommandLineInterface
from daphne.server import Server
from django.conf import settings

from config.body_limit import declared_length, refusal


def received_bytes(request: Any) -> int:
    """The size of the body Twisted holds for this request (`Request.content`, a file)."""
    content = request.content
    position = content.tell()
    size = content.seek(0, os.SEEK_END)
    content.seek(position)
    return size


class BoundedServer(Server):
    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        if scope["type"] == "http":
            limit: int = settings.MAX_REQUEST_BODY_BYTES
            size = max(declared_length(scope) or 0, received_bytes(protocol))
            if size > limit:
                for message in refusal(scope, limit):
                    protocol.handle_reply(message)
                return None  # daphne then neither queues the body nor starts the application
        return super().create_application(protocol, scope)


class BoundedCommandLine(CommandLineInterface):
    server_class = BoundedServer


if __name__ == "__main__":
    BoundedCommandLine.entrypoint()
