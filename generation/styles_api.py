"""REST API v1 for saved prompt styles: thin views over generation.styles.

Errors are JSON `{"field": ..., "detail": ...}`. Another user's private style is a 404, exactly
like one that does not exist.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.models import PromptStyle
from generation.serializers import ErrorSerializer
from generation.styles import (
    StyleError,
    create_style,
    editable_by,
    export_csv,
    import_csv,
    update_style,
)


class PromptStyleSerializer(serializers.ModelSerializer):
    shared = serializers.BooleanField(
        required=False, default=False, help_text="staff only: publish to every member"
    )

    class Meta:
        model = PromptStyle
        fields = ["id", "name", "prompt", "negative_prompt", "shared"]
        read_only_fields = ["id"]


ERRORS = {code: ErrorSerializer for code in (400, 403, 404, 409, 422)}


def _error(exc: StyleError) -> Response:
    return Response(exc.as_dict(), status=exc.status)


def _data(request: Request) -> dict[str, Any]:
    return dict(request.data.items()) if hasattr(request.data, "items") else {}


class StyleListView(APIView):
    @extend_schema(responses=PromptStyleSerializer(many=True), summary="My styles and shared ones")
    def get(self, request: Request) -> Response:
        styles = PromptStyle.objects.visible_to(request.user).order_by("name", "owner")
        return Response(PromptStyleSerializer(styles, many=True).data)

    @extend_schema(
        request=PromptStyleSerializer,
        responses={201: PromptStyleSerializer, **ERRORS},
        summary="Save a style ({prompt} marks where your prompt goes)",
    )
    def post(self, request: Request) -> Response:
        data = _data(request)
        shared = data.pop("shared", False) in (True, "true", "on", "1")
        try:
            style = create_style(request.user, data, shared=shared)
        except StyleError as exc:
            return _error(exc)
        return Response(PromptStyleSerializer(style).data, status=status.HTTP_201_CREATED)


class StyleDetailView(APIView):
    @extend_schema(responses={200: PromptStyleSerializer, 404: ErrorSerializer})
    def get(self, request: Request, pk: int) -> Response:
        style = get_object_or_404(PromptStyle.objects.visible_to(request.user), pk=pk)
        return Response(PromptStyleSerializer(style).data)

    def _editable(self, request: Request, pk: int) -> PromptStyle:
        style = get_object_or_404(PromptStyle.objects.visible_to(request.user), pk=pk)
        if not editable_by(request.user).filter(pk=style.pk).exists():
            raise StyleError("shared", "only staff change shared styles", 403)
        return style

    @extend_schema(request=PromptStyleSerializer, responses={200: PromptStyleSerializer, **ERRORS})
    def patch(self, request: Request, pk: int) -> Response:
        try:
            style = update_style(self._editable(request, pk), _data(request))
        except StyleError as exc:
            return _error(exc)
        return Response(PromptStyleSerializer(style).data)

    put = patch

    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, pk: int) -> Response:
        try:
            self._editable(request, pk).delete()
        except StyleError as exc:
            return _error(exc)
        return Response(status=status.HTTP_204_NO_CONTENT)


class StyleExportView(APIView):
    @extend_schema(responses={(200, "text/csv"): str}, summary="My styles as A1111's styles.csv")
    def get(self, request: Request) -> HttpResponse:
        response = HttpResponse(export_csv(request.user), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="styles.csv"'
        return response


class StyleImportView(APIView):
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(
        request=inline_serializer(
            "StyleImport",
            {
                "file": serializers.FileField(required=False, help_text="an A1111 styles.csv"),
                "csv": serializers.CharField(required=False, help_text="or its text"),
            },
        ),
        responses={
            200: inline_serializer("StyleImported", {"imported": serializers.IntegerField()}),
            **ERRORS,
        },
        summary="Add or replace my styles from an A1111 styles.csv",
    )
    def post(self, request: Request) -> Response:
        upload = request.FILES.get("file")
        try:
            if upload is not None:
                raw = upload.read()
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise StyleError("file", "styles.csv must be UTF-8 text", 400) from None
            else:
                text = request.data.get("csv") if hasattr(request.data, "get") else None
                if not isinstance(text, str):
                    raise StyleError(
                        "file", "send a styles.csv as `file` or its text as `csv`", 400
                    )
            count = import_csv(request.user, text)
        except StyleError as exc:
            return _error(exc)
        return Response({"imported": count})
