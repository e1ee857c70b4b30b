"""REST API of the checkpoint merger: thin views over `generation.merges`.

- `POST /api/v1/merges/`: a merge job writing a new model of yours (202-style: the job);
- `POST /api/v1/merges/virtual/`: the same recipe saved at once as a model without a file;
- `POST /api/v1/own-models/<id>/bake/`: the job that writes a virtual model's file;
- `GET /api/v1/merges/options/`: methods, per-block names by family, presets.
"""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.api import ERRORS, created
from generation.merges import bake_virtual, save_virtual, submit_merge
from generation.model_uploads import OwnModelSerializer
from generation.models import CatalogEntry
from generation.serializers import JobSerializer
from gpu_worker.merge_rules import METHODS, PRESETS, block_names


class MergeRequestSerializer(serializers.Serializer):
    """A1111's Checkpoint Merger fields (names of models you may use)."""

    method = serializers.ChoiceField(choices=list(METHODS), default="Weighted sum")
    primary = serializers.CharField(help_text="Model A")
    secondary = serializers.CharField(
        required=False, help_text="Model B (Weighted sum, Add difference)"
    )
    tertiary = serializers.CharField(required=False, help_text="Model C (Add difference)")
    multiplier = serializers.FloatField(default=0.5, min_value=0, max_value=1, help_text="M")
    block_weights = serializers.ListField(
        child=serializers.FloatField(min_value=0, max_value=1),
        required=False,
        help_text="Per-block M: BASE, IN00.., M00, OUT.. (26 for SD1, 20 for SDXL)",
    )
    preset = serializers.ChoiceField(choices=sorted(PRESETS), required=False)
    save_as_half = serializers.BooleanField(default=False)
    bake_in_vae = serializers.CharField(required=False, help_text="A VAE to bake in")
    discard_weights = serializers.CharField(
        required=False, allow_blank=True, help_text="Regex of keys left out"
    )
    name = serializers.CharField(
        required=False,
        help_text="The new model's name (unique among yours); A1111's `0.7(a) + 0.3(b)` if none",
    )


class MergeOptionsSerializer(serializers.Serializer):
    methods = serializers.ListField(child=serializers.CharField())
    blocks = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
    presets = serializers.ListField(child=serializers.CharField())


def _body(request: Request) -> Any:
    data = request.data
    return data.dict() if hasattr(data, "dict") else data  # a form's QueryDict, else JSON


class MergeCreateView(APIView):
    @extend_schema(
        operation_id="merges_create",
        request=MergeRequestSerializer,
        responses={201: JobSerializer, **ERRORS},
        summary="Merge checkpoints into a new model of yours (a job on a GPU worker)",
    )
    def post(self, request: Request) -> Response:
        return created(lambda: submit_merge(request.user, _body(request)), JobSerializer)


class VirtualMergeView(APIView):
    @extend_schema(
        operation_id="merges_virtual",
        request=MergeRequestSerializer,
        responses={201: OwnModelSerializer, **ERRORS},
        summary="Save a merge recipe as a model without writing a file",
    )
    def post(self, request: Request) -> Response:
        return created(lambda: save_virtual(request.user, _body(request)), OwnModelSerializer)


class BakeView(APIView):
    @extend_schema(
        operation_id="own_models_bake",
        request=None,
        responses={201: JobSerializer, **ERRORS},
        summary="Write a virtual model's file (a merge job)",
    )
    def post(self, request: Request, pk: int) -> Response:
        entry = get_object_or_404(CatalogEntry.objects.members_own(request.user), pk=pk)
        return created(lambda: bake_virtual(request.user, entry), JobSerializer)


class MergeOptionsView(APIView):
    @extend_schema(
        operation_id="merges_options",
        responses={200: MergeOptionsSerializer},
        summary="Merge methods, per-block names by family and presets",
    )
    def get(self, request: Request) -> Response:
        return Response(
            {
                "methods": list(METHODS),
                "blocks": {family: block_names(family) for family in ("sd1", "sd2", "sdxl")},
                "presets": sorted(PRESETS),
            }
        )
