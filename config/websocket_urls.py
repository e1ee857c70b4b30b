# Websocket routes.
from django.urls import path

from generation.consumers import JobsConsumer

websocket_urlpatterns: list = [
    path("ws/jobs/", JobsConsumer.as_asgi()),
]
