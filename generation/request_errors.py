"""The error every request check raises: the field to fix, the message, the HTTP status."""

from __future__ import annotations


class SubmissionError(Exception):
    """A request the service refuses; `field` names what to fix, `status` the HTTP answer."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "detail": self.message}
