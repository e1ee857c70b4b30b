"""ASGI entry point: HTTP through Django; websockets through Channels, authenticated and
origin-checked. In front of both: the real client address (config/client_address.py); in front
of HTTP: the request-body limit (config/body_limit.py)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

# Django must be set up before anything imports models (consumers do).
django.setup(set_prefix=False)

from config.asgi_handler import SyncViewsInOneThread  # noqa: E402

django_asgi_app = SyncViewsInOneThread()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from config.body_limit import BodySizeLimit  # noqa: E402
from config.client_address import ClientAddressFromProxy  # noqa: E402
from config.waiting_calls import WaitingCallsWithoutThreads  # noqa: E402
from config.websocket_urls import websocket_urlpatterns  # noqa: E402

application = ClientAddressFromProxy(
    ProtocolTypeRouter(
        {
            "http": BodySizeLimit(WaitingCallsWithoutThreads(django_asgi_app)),
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            ),
        }
    )
)
