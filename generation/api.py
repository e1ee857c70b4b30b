"""REST API v1 for generation: thin views over the submission service.

Errors are JSON `{"field": ..., "detail": ...}` with the status the service chose.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, cast

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.ledger import account_for
from accounts.member_request import MemberApiRequest
from accounts.tiers import effective_tier
from generation.error_text import readable_error
from generation.images import delete_image
from generation.limits import limits_for
from generation.models import CatalogEntry, Job, JobImage, UserGenerationSettings
from generation.scheduling.estimates import measured_speed
from generation.serializers import (
    CatalogEntrySerializer,
    DefaultModelSerializer,
    ErrorSerializer,
    ImageSerializer,
    JobRequestSerializer,
    JobSerializer,
    MeSerializer,
    QuoteSerializer,
    SamplerListSerializer,
    check_job_request,
)
from generation.submission import (
    SubmissionError,
    cancel_job,
    default_checkpoint,
    quote_job,
    set_default_checkpoint,
    submit_job,
)
from gpu_worker.samplers import list_samplers, list_schedulers

ERRORS = {code: ErrorSerializer for code in (400, 402, 403, 404, 409, 422, 429, 503)}


def error_response(exc: SubmissionError) -> Response:
    # "message" is the same error for people: the field's label, in the request's language.
    body = {**exc.as_dict(), "message": readable_error(exc.field, exc.message)}
    response = Response(body, status=exc.status)
    if exc.status in (429, 503):  # too many jobs, or the queue is unreachable: come back soon
        response["Retry-After"] = "10"
    return response


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description="Retrying with the same key returns the first job instead of a second",
)


def created(submit: Callable[[], Any], serializer: type[serializers.Serializer]) -> Response:
    """The answer to a submission: 201 with what `submit` made (a job, a model), or the
    service's refusal with its status."""
    try:
        made = submit()
    except SubmissionError as exc:
        return error_response(exc)
    return Response(serializer(made).data, status=status.HTTP_201_CREATED)


def request_params(request: Request) -> dict[str, Any]:
    """JSON bodies as they are; form posts flattened, with `hires` and `inpaint` as JSON text
    and `init_image` and `mask` as uploaded files. Checked by the request serializer (types and the
    caller's bounds) before the service sees them."""
    # Always a dict: JSONObjectParser (config/api_parsers.py) lets only JSON objects through and
    # form posts parse to a QueryDict.
    data = cast("dict[str, Any]", request.data)
    if not hasattr(data, "getlist"):
        params: dict[str, Any] = data
    else:
        params = {key: data.get(key) for key in data}
        for nested in ("hires", "inpaint"):
            if isinstance(params.get(nested), str):
                try:
                    params[nested] = json.loads(params[nested]) if params[nested] else None
                except ValueError:
                    raise SubmissionError(nested, f"{nested} must be a JSON object") from None
    check_job_request(params, limits_for(request.user))
    return params


class JobPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class JobListCreateView(APIView):
    @extend_schema(
        operation_id="jobs_list",
        responses=JobSerializer(many=True),
        parameters=[
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int),
            OpenApiParameter("status", str, enum=Job.Status.values),
        ],
        summary="My jobs, newest first (paginated)",
    )
    def get(self, request: Request) -> Response:
        jobs = (
            Job.objects.owned_by(request.user)
            .select_related("checkpoint")
            .prefetch_related("images")
            .order_by("-created_at")
        )
        if wanted := request.query_params.get("status"):
            jobs = jobs.filter(status=wanted)
        paginator = JobPagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response(JobSerializer(page, many=True).data)

    @extend_schema(
        operation_id="jobs_create",
        request=JobRequestSerializer,
        responses={201: JobSerializer, **ERRORS},
        parameters=[IDEMPOTENCY_KEY],
        summary="Submit a generation job",
    )
    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key")
        # The generator page posts here from the member's session: its parameters become the
        # form's next defaults. A script with a token leaves the form alone (as A1111's API
        # leaves its UI), which also spares its submissions that UPDATE.
        from_page = request.auth is None
        return created(
            lambda: submit_job(
                request.user, request_params(request), idempotency_key=key, remember=from_page
            ),
            JobSerializer,
        )


class JobDetailView(APIView):
    @extend_schema(
        operation_id="jobs_retrieve", responses={200: JobSerializer, 404: ErrorSerializer}
    )
    def get(self, request: Request, pk: Any) -> Response:
        job = get_object_or_404(Job.objects.visible_to(request.user), pk=pk)
        return Response(JobSerializer(job).data)


class JobCancelView(APIView):
    @extend_schema(
        operation_id="jobs_cancel",
        request=None,
        responses={200: JobSerializer, **ERRORS},
        summary="Cancel a job",
    )
    def post(self, request: Request, pk: Any) -> Response:
        job = get_object_or_404(Job.objects.visible_to(request.user), pk=pk)
        try:
            job = cancel_job(request.user, job)
        except SubmissionError as exc:
            return error_response(exc)
        return Response(JobSerializer(job).data)


class JobQuoteView(APIView):
    @extend_schema(
        operation_id="jobs_quote",
        request=JobRequestSerializer,
        responses={200: QuoteSerializer, **ERRORS},
        summary="Validate and price a job without submitting it",
    )
    def post(self, request: Request) -> Response:
        try:
            valid = quote_job(request.user, request_params(request))
        except SubmissionError as exc:
            return error_response(exc)
        speed = measured_speed(valid.checkpoint.pk, valid.params["width"], valid.params["height"])
        return Response(
            QuoteSerializer(
                {
                    "price": valid.price,
                    "total_steps": valid.total_steps,
                    "params": valid.params,
                    "checkpoint": valid.checkpoint.name,
                    "eta": round(speed.duration(valid.params), 1),
                    "eta_source": speed.source,
                }
            ).data
        )


class CatalogListView(ListAPIView):
    serializer_class = CatalogEntrySerializer
    pagination_class = None
    kind: str = CatalogEntry.Kind.CHECKPOINT

    def get_queryset(self) -> Any:
        return CatalogEntry.objects.visible_to(self.request.user).filter(kind=self.kind)


class ModelListView(CatalogListView):
    kind = CatalogEntry.Kind.CHECKPOINT


class LoraListView(CatalogListView):
    kind = CatalogEntry.Kind.LORA


class VaeListView(CatalogListView):
    kind = CatalogEntry.Kind.VAE


class UpscalerListView(CatalogListView):
    """Upscaler models (ESRGAN, Real-ESRGAN) usable in hires fix by name."""

    kind = CatalogEntry.Kind.UPSCALER


class SamplerListView(APIView):
    @extend_schema(responses=SamplerListSerializer, summary="Samplers and schedule types")
    def get(self, request: Request) -> Response:
        return Response({"samplers": list_samplers(), "schedulers": list_schedulers()})


class MeView(APIView):
    @extend_schema(responses=MeSerializer)
    def get(self, request: MemberApiRequest) -> Response:
        user = request.user
        row = UserGenerationSettings.objects.filter(user=user).first()
        model = default_checkpoint(user)
        account = account_for(user)
        return Response(
            MeSerializer(
                {
                    "id": user.pk,
                    "username": user.get_username(),
                    "email": user.email,
                    "is_staff": user.is_staff,
                    "balance": account.balance,
                    "tier": effective_tier(account).name,
                    "default_checkpoint": model.name if model else None,
                    "last_params": row.last_params if row else {},
                    "limits": dataclasses.asdict(limits_for(user)),
                    "unfinished_jobs": Job.objects.owned_by(user).unfinished().count(),
                }
            ).data
        )


class DefaultModelView(APIView):
    @extend_schema(
        request=DefaultModelSerializer,
        responses={200: DefaultModelSerializer, **ERRORS},
        summary="Set my default model (mine only, never global)",
    )
    def post(self, request: Request) -> Response:
        name = request.data.get("checkpoint") if hasattr(request.data, "get") else None
        if not isinstance(name, str) or not name:
            return error_response(SubmissionError("checkpoint", "checkpoint is required"))
        try:
            entry = set_default_checkpoint(request.user, name)
        except SubmissionError as exc:
            return error_response(exc)
        return Response({"checkpoint": entry.name})


class ImageListView(ListAPIView):
    serializer_class = ImageSerializer
    pagination_class = JobPagination
    request: MemberApiRequest  # IsAuthenticated (the default) lets no anonymous caller in

    @extend_schema(parameters=[OpenApiParameter("model", str, description="checkpoint name")])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> Any:
        images = (
            JobImage.objects.filter(owner=self.request.user)
            .select_related("job__checkpoint")
            .order_by("-created_at", "index")
        )
        if model := self.request.query_params.get("model"):
            images = images.filter(job__checkpoint__name=model)
        return images


class ImageDetailView(APIView):
    @extend_schema(responses={200: ImageSerializer, 404: ErrorSerializer})
    def get(self, request: Request, pk: Any) -> Response:
        image = get_object_or_404(JobImage.objects.visible_to(request.user), pk=pk)
        return Response(ImageSerializer(image).data)

    @extend_schema(responses={204: None, 404: ErrorSerializer})
    def delete(self, request: Request, pk: Any) -> Response:
        image = get_object_or_404(JobImage.objects.visible_to(request.user), pk=pk)
        delete_image(image)
        return Response(status=status.HTTP_204_NO_CONTENT)
