# Websocket routes.
from django.urls import path

from generation.consumers import JobsConsumer

websocket_urlpatterns: list = [
    # Channels routes ASGI apps with Django's path(), whose stubs expect an HTTP view.
    path("ws/jobs/", JobsConsumer.as_asgi()),  # type: ignore[arg-type]
]
