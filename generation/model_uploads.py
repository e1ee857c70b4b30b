"""Members' model uploads over tus (drf-tus), and the REST views of their own models.

The tus endpoint is `/api/v1/own-models/uploads/`: POST creates an upload (the `Upload-Length`
is checked against the member's quota first, `Upload-Metadata` carries `name`, and for staff
`platform 1` to add a catalogue model instead, through the same checks), PATCH sends a
chunk at an offset (one request per chunk, so MAX_REQUEST_BODY_MB caps a chunk), HEAD tells a
client where to resume. When the last chunk lands, `StoreSaveHandler` hashes and checks the file
and makes it the member's private catalogue entry; a refused file is deleted and the PATCH says
why. Uploads are visible to their uploader only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.shortcuts import get_object_or_404
from django.urls import reverse
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView, ListAPIView
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework_tus import constants
from rest_framework_tus.storage import (
    AbstractUploadSaveHandler,
)
from rest_framework_tus.views import UploadViewSet

from accounts.throttles import ModelUploadThrottle
from generation import model_store
from generation.models import CatalogEntry, ModelUpload
from generation.own_models import (
    NAME_PATTERN,
    OwnModelError,
    add_own_model,
    add_platform_model,
    check_quota,
    clear_preview,
    delete_own_model,
    quota_for,
    set_preview,
    update_own_model,
)
from gpu_worker.model_files import UnreadableModel


class StoreSaveHandler(AbstractUploadSaveHandler):
    """drf-tus calls this when an upload's last byte arrived."""

    def handle_save(self) -> None:
        upload: ModelUpload = self.upload
        metadata = upload.upload_metadata or {}
        if isinstance(metadata, str):  # drf-tus stores the metadata as JSON text
            metadata = json.loads(metadata)
        name = str(metadata.get("name", ""))
        add = add_platform_model if wants_platform(metadata) else add_own_model
        try:
            stored = model_store.store_file(
                Path(upload.get_or_create_temporary_file()), label=name or "file"
            )
            upload.entry = add(upload.user, stored, name)
        except UnreadableModel as exc:
            raise UploadRefused(str(exc)) from exc
        except OwnModelError as exc:
            raise UploadRefused(f"{exc.field}: {exc.message}") from exc
        upload.save()  # the temporary file is gone: the store adopted it
        self.finish()


def wants_platform(metadata: Any) -> bool:
    """`Upload-Metadata: platform 1`: staff add a catalogue model instead of their own."""
    return isinstance(metadata, dict) and str(metadata.get("platform", "")) in ("1", "true")


class UploadRefused(Exception):
    """drf-tus answers 400 with this message and deletes the upload."""


class ModelUploadSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelUpload
        fields = ["guid", "upload_length", "upload_metadata", "filename"]


class ModelUploadViewSet(UploadViewSet):
    serializer_class = ModelUploadSerializer
    throttle_classes = [ModelUploadThrottle]

    def get_queryset(self) -> Any:
        return ModelUpload.objects.filter(user=self.request.user)

    def perform_create(self, serializer: Any) -> None:
        serializer.save(user=self.request.user)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        length = getattr(request, constants.UPLOAD_LENGTH_FIELD_NAME, -1)
        if length < 0:
            return _refuse("Upload-Length", "an upload must say its length (Upload-Length)", 400)
        name = getattr(request, constants.UPLOAD_METADATA_FIELD_NAME, {}).get("name", "")
        if not NAME_PATTERN.match(name):
            # Said now, not after gigabytes (the kind, for name clashes, is known only then).
            return _refuse(
                "name",
                "Upload-Metadata must carry a name of 1-100 letters, digits, spaces or "
                ". _ ( ) + - characters",
                400,
            )
        if wants_platform(getattr(request, constants.UPLOAD_METADATA_FIELD_NAME, {})):
            if not request.user.is_staff:
                return _refuse("platform", "only staff upload platform models", 403)
            return super().create(request, *args, **kwargs)  # the catalogue has no quota
        try:
            check_quota(request.user, length)
        except OwnModelError as exc:
            return Response(exc.as_dict(), status=exc.status)
        return super().create(request, *args, **kwargs)

    def validate_chunk(self, offset: int, chunk_bytes: bytes) -> bytes:
        upload = self.get_object()
        if offset + len(chunk_bytes) > upload.upload_length:
            # drf-tus would write past the declared (and quota-checked) length.
            raise serializers.ValidationError(
                {"Upload-Offset": f"this chunk ends past the length {upload.upload_length}"}
            )
        return chunk_bytes

    def validate_filename(self, filename: str) -> str:
        return ""  # never kept: stored files are named by their hash

    def get_success_headers(self, data: Any) -> dict[str, str]:
        return {"Location": reverse("api-model-upload-detail", kwargs={"guid": data["guid"]})}

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Where an upload stands, and the catalogue entry it became."""
        upload = self.get_object()
        entry = upload.entry
        return Response(
            {
                "offset": upload.upload_offset,
                "length": upload.upload_length,
                "state": upload.state,
                "model": OwnModelSerializer(entry).data if entry else None,
            }
        )

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return Response({"detail": "use /api/v1/own-models/ to list your models"}, status=405)


def _refuse(field: str, message: str, code: int) -> Response:
    return Response({"field": field, "detail": message}, status=code)


class OwnModelSerializer(serializers.ModelSerializer):
    preview_url = serializers.SerializerMethodField()
    virtual = serializers.SerializerMethodField(help_text="A saved merge recipe with no file yet")
    recipe = serializers.SerializerMethodField(help_text="How a merged model is made, if it is")

    class Meta:
        model = CatalogEntry
        fields = [
            "id",
            "name",
            "kind",
            "family",
            "description",
            "trigger_words",
            "size_bytes",
            "sha256",
            "short_hash",
            "published",
            "enabled",
            "preview_url",
            "created_at",
            "virtual",
            "recipe",
        ]
        read_only_fields = fields

    def get_virtual(self, entry: CatalogEntry) -> bool:
        return entry.stored_file_id is None

    def get_recipe(self, entry: CatalogEntry) -> dict[str, Any] | None:
        recipe = getattr(entry, "recipe", None)
        return dict(recipe.params) if recipe is not None else None

    def get_preview_url(self, entry: CatalogEntry) -> str | None:
        return reverse("catalogue-preview", args=[entry.pk]) if entry.preview else None


class OwnModelListView(ListAPIView):
    serializer_class = OwnModelSerializer
    pagination_class = None

    def get_queryset(self) -> Any:
        return CatalogEntry.objects.members_own(self.request.user).select_related("recipe")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        quota = quota_for(request.user)
        return Response(
            {
                "models": self.get_serializer(self.get_queryset(), many=True).data,
                "quota": {
                    "used_bytes": quota.used_bytes,
                    "max_bytes": quota.max_bytes,
                    "used_count": quota.used_count,
                    "max_count": quota.max_count,
                },
            }
        )


class OwnModelDetailView(GenericAPIView):
    """Rename, describe, set trigger words (PATCH) or delete (DELETE) one of your models. Another
    member's model is a 404, exactly like one that does not exist."""

    serializer_class = OwnModelSerializer

    def _entry(self, request: Request, pk: int) -> CatalogEntry:
        return get_object_or_404(CatalogEntry.objects.members_own(request.user), pk=pk)

    def get(self, request: Request, pk: int) -> Response:
        return Response(OwnModelSerializer(self._entry(request, pk)).data)

    def patch(self, request: Request, pk: int) -> Response:
        entry = self._entry(request, pk)
        data: dict[str, Any] = request.data if isinstance(request.data, dict) else {}
        fields = ("name", "description", "trigger_words")
        changes: dict[str, Any] = {k: data[k] for k in fields if k in data}
        try:
            entry = update_own_model(request.user, entry, changes)
        except OwnModelError as exc:
            return Response(exc.as_dict(), status=exc.status)
        return Response(OwnModelSerializer(entry).data)

    def delete(self, request: Request, pk: int) -> Response:
        delete_own_model(request.user, self._entry(request, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class OwnModelPreviewView(GenericAPIView):
    """Set (PUT: multipart `image`, or JSON `image` as base64) or remove (DELETE) the preview
    image of one of your models. Others' models are a 404, like ones that do not exist."""

    serializer_class = OwnModelSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    def _entry(self, request: Request, pk: int) -> CatalogEntry:
        return get_object_or_404(CatalogEntry.objects.members_own(request.user), pk=pk)

    def put(self, request: Request, pk: int) -> Response:
        entry = self._entry(request, pk)
        raw = request.data.get("image") if hasattr(request.data, "get") else None
        if raw is None:
            return _refuse("image", "send the preview as `image` (a file, or base64 text)", 400)
        try:
            entry = set_preview(request.user, entry, raw)
        except OwnModelError as exc:
            return Response(exc.as_dict(), status=exc.status)
        return Response(OwnModelSerializer(entry).data)

    def delete(self, request: Request, pk: int) -> Response:
        return Response(
            OwnModelSerializer(clear_preview(request.user, self._entry(request, pk))).data
        )
