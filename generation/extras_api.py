"""REST API v1 for Extras jobs (upscale a finished image): thin views over generation.extras.

The job that comes back is an ordinary job (`GET /api/v1/jobs/<id>/`, cancel, websocket events);
its one image lands in My images.
"""

from __future__ import annotations

from typing import Any, cast

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.api import ERRORS, IDEMPOTENCY_KEY, created, error_response
from generation.extras import submit_extras, validate_extras
from generation.scheduling.estimates import measured_speed
from generation.serializers import InitImageField, JobSerializer, QuoteSerializer
from generation.submission import SubmissionError
from gpu_worker import extras_plan
from gpu_worker.params import EXTRAS_DEFAULTS

UPSCALER_HELP = (
    "'None' (no upscale), 'Lanczos', 'Nearest', or an upscaler model's name "
    "(GET /api/v1/upscalers/)"
)


def _number(low: float, high: float, help_text: str) -> serializers.FloatField:
    return serializers.FloatField(
        required=False, allow_null=True, min_value=low, max_value=high, help_text=help_text
    )


class ExtrasRequestSerializer(serializers.Serializer):
    """An upscale of one image (gpu_worker.params.ExtrasParams, A1111's extras tab): a field
    left out takes its default. The output counts against max_side and max_pixels."""

    image_id = serializers.UUIDField(
        required=False, allow_null=True, help_text="one of your images (GET /api/v1/images/)"
    )
    image = InitImageField(
        required=False, allow_null=True, help_text="or an upload: base64 (data URI allowed) / file"
    )
    resize_mode = serializers.ChoiceField(
        choices=[0, 1], required=False, help_text="0: by scale (default); 1: to target size"
    )
    scale = _number(*extras_plan.SCALE_RANGE, f"default {EXTRAS_DEFAULTS['scale']}")
    target_width = serializers.IntegerField(required=False, help_text="resize_mode 1")
    target_height = serializers.IntegerField(required=False, help_text="resize_mode 1")
    crop = serializers.BooleanField(
        required=False, help_text="resize_mode 1: crop to exactly the target (default true)"
    )
    upscaler_1 = serializers.CharField(
        required=False, help_text=f"default Lanczos; {UPSCALER_HELP}"
    )
    upscaler_2 = serializers.CharField(required=False, help_text=f"default None; {UPSCALER_HELP}")
    upscaler_2_visibility = _number(0.0, 1.0, "how much of upscaler_2 is blended in")
    gfpgan_visibility = _number(0.0, 1.0, "GFPGAN face restoration blended in (0: off)")
    codeformer_visibility = _number(
        0.0, 1.0, "CodeFormer (only where the operator enabled its licence)"
    )
    codeformer_weight = _number(0.0, 1.0, "CodeFormer fidelity")


def _params(request: Request) -> dict[str, Any]:
    data = cast("dict[str, Any]", request.data)
    if hasattr(data, "getlist"):  # a form post: one value per field, the image as a file
        return {key: data.get(key) for key in data}
    return data


class ExtrasCreateView(APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(
        operation_id="extras_create",
        request=ExtrasRequestSerializer,
        responses={201: JobSerializer, **ERRORS},
        parameters=[IDEMPOTENCY_KEY],
        summary="Upscale an image (Extras): a job billed per output megapixel",
    )
    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key")
        return created(
            lambda: submit_extras(request.user, _params(request), idempotency_key=key),
            JobSerializer,
        )


class ExtrasQuoteView(APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema(
        operation_id="extras_quote",
        request=ExtrasRequestSerializer,
        responses={200: QuoteSerializer, **ERRORS},
        summary="Validate and price an upscale without submitting it",
    )
    def post(self, request: Request) -> Response:
        try:
            valid = validate_extras(request.user, _params(request))
        except SubmissionError as exc:
            return error_response(exc)
        params = valid.params
        speed = measured_speed(valid.checkpoint.pk, params["width"], params["height"])
        body = {
            "price": valid.price,
            "total_steps": valid.total_steps,
            "params": params,
            "checkpoint": valid.checkpoint.name,
            "eta": round(speed.duration(params), 1),
            "eta_source": speed.source,
        }
        return Response(QuoteSerializer(body).data)
