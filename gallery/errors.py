"""Refusals the gallery services raise, each with a message fit to show the member."""

from __future__ import annotations


class GalleryError(Exception):
    """A request the gallery refuses; `status` is the HTTP status a front door answers with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotAllowed(GalleryError):
    status = 403


class NotFound(GalleryError):
    status = 404


class Conflict(GalleryError):
    status = 409
