"""REST API v1: ControlNet preprocessors and their previews (thin views over
generation.controlnet_preview; A1111's /controlnet/detect is the same service)."""

from __future__ import annotations

import base64
from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.api import error_response
from generation.broker import get_redis
from generation.controlnet_preview import decode_images, preview_maps, processor_resolution
from generation.fleet import available_preprocessors
from generation.serializers import ErrorSerializer
from generation.submission import SubmissionError
from gpu_worker.params import CONTROLNET_UNIT_DEFAULTS

DEFAULT = CONTROLNET_UNIT_DEFAULTS


class DetectRequest(serializers.Serializer):
    """Only shapes here: the service checks values and names the field and the limit."""

    module = serializers.CharField(max_length=100, help_text="preprocessor; default none")
    image = serializers.CharField(help_text="base64 PNG/JPEG/WEBP (a data URI is fine)")
    processor_res = serializers.JSONField(
        required=False, help_text=f"default {DEFAULT['processor_res']}"
    )
    threshold_a = serializers.JSONField(
        required=False,
        help_text="the module's first slider (canny: low threshold); default: the slider's",
    )
    threshold_b = serializers.JSONField(
        required=False,
        help_text="the module's second slider (canny: high threshold); default: the slider's",
    )
    pixel_perfect = serializers.BooleanField(
        required=False, help_text="processor_res from width/height/resize_mode, as the job will"
    )
    width = serializers.IntegerField(required=False, min_value=64, max_value=8192)
    height = serializers.IntegerField(required=False, min_value=64, max_value=8192)
    resize_mode = serializers.IntegerField(required=False, min_value=0, max_value=2)


class PreprocessorListView(APIView):
    @extend_schema(
        responses=inline_serializer(
            "Preprocessors", {"preprocessors": serializers.ListField(child=serializers.CharField())}
        ),
        summary="ControlNet preprocessors: built in, and those whose weights a worker has",
    )
    def get(self, request: Request) -> Response:
        return Response({"preprocessors": available_preprocessors(get_redis())})


class DetectView(APIView):
    @extend_schema(
        request=DetectRequest,
        responses={
            200: inline_serializer(
                "ControlMap",
                {
                    "module": serializers.CharField(),
                    "processor_res": serializers.IntegerField(),
                    "image": serializers.CharField(help_text="the control map, base64 PNG"),
                },
            ),
            **{code: ErrorSerializer for code in (400, 403, 422, 429, 503, 504)},
        },
        summary="Preview a preprocessor's control map (run by a GPU worker; free)",
    )
    def post(self, request: Request) -> Response:
        checked = DetectRequest(data=request.data)
        if not checked.is_valid():
            field, problems = next(iter(checked.errors.items()))
            return Response({"field": field, "detail": f"{field}: {problems[0]}"}, status=400)
        data: dict[str, Any] = checked.validated_data
        try:
            [image] = decode_images(request.user, [data["image"]], "image")
            res = processor_resolution(
                image,
                data.get("processor_res", DEFAULT["processor_res"]),
                pixel_perfect=data.get("pixel_perfect", False),
                target=(data["width"], data["height"])
                if "width" in data and "height" in data
                else None,
                resize_mode=data.get("resize_mode", DEFAULT["resize_mode"]),
            )
            [png] = preview_maps(
                request.user,
                data["module"],
                [image],
                res,
                data.get("threshold_a"),  # left out: the module's default
                data.get("threshold_b"),
            )
        except SubmissionError as exc:
            if exc.field == "image[0]":
                exc.field = "image"
            return error_response(exc)
        return Response(
            {
                "module": data["module"],
                "processor_res": res,
                "image": base64.b64encode(png).decode("ascii"),
            }
        )
