"""Request parsers for the REST API."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class JSONObjectParser(JSONParser):
    """Every JSON body the API accepts is an object: `[1, 2]`, `"text"` or `null` is a 400 that
    says so, before any view looks at it."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        if not isinstance(data, dict):
            kind = "null" if data is None else type(data).__name__
            raise ParseError(
                {"field": "body", "detail": f"the JSON body must be an object, not {kind}"}
            )
        return data
