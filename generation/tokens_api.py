"""REST API v1: the generator's token counter (a thin view over generation.token_counter)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.serializers import ErrorSerializer
from generation.styles import StyleError
from generation.token_counter import count_prompt_tokens
from gpu_worker.clip_vocab import VocabularyMissing

MAX_TEXT = 20_000
MAX_STEPS = 1000  # only the schedule of an edited prompt depends on it


class TokenCountRequest(serializers.Serializer):
    prompt = serializers.CharField(required=False, allow_blank=True, max_length=MAX_TEXT)
    negative_prompt = serializers.CharField(required=False, allow_blank=True, max_length=MAX_TEXT)
    styles = serializers.ListField(child=serializers.CharField(), required=False, allow_null=True)
    steps = serializers.IntegerField(required=False, min_value=1, max_value=MAX_STEPS)


COUNT = inline_serializer(
    "TokenCount",
    {
        "tokens": serializers.IntegerField(),
        "limit": serializers.IntegerField(help_text="75 per chunk"),
        "chunks": serializers.ListField(child=serializers.IntegerField()),
        "label": serializers.CharField(help_text='A1111\'s "n/75"'),
    },
)


class TokenCountView(APIView):
    @extend_schema(
        request=TokenCountRequest,
        responses={
            200: inline_serializer("TokenCounts", {"prompt": COUNT, "negative_prompt": COUNT}),
            400: ErrorSerializer,
            422: ErrorSerializer,
            503: ErrorSerializer,
        },
        summary="CLIP tokens of both prompts per 75-token chunk (styles and embeddings counted)",
    )
    def post(self, request: Request) -> Response:
        checked = TokenCountRequest(data=request.data)
        if not checked.is_valid():
            field, problems = next(iter(checked.errors.items()))
            first = problems[0] if isinstance(problems, list) else next(iter(problems.values()))
            return Response({"field": field, "detail": f"{field}: {first}"}, status=400)
        data = checked.validated_data
        try:
            counts = count_prompt_tokens(
                request.user,
                data.get("prompt", ""),
                data.get("negative_prompt", ""),
                data.get("styles"),
                data.get("steps", 20),
            )
        except StyleError as exc:
            return Response(exc.as_dict(), status=exc.status)
        except VocabularyMissing as exc:
            return Response({"field": "prompt", "detail": str(exc)}, status=503)
        return Response(counts)
