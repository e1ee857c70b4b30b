"""REST API for LoRA training: datasets (upload, captions) and training jobs (start, follow,
download each epoch's LoRA). Thin views over generation.training_datasets and
generation.submission; cancel is the jobs API's (`POST /api/v1/jobs/<id>/cancel/`).

Another member's dataset or job is a 404, exactly like one that does not exist.
"""

from __future__ import annotations

from typing import Any

from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from generation.api import ERRORS, error_response
from generation.models import Job, TrainingDataset, TrainingEpoch, TrainingImage
from generation.submission import SubmissionError, quote_job
from generation.training_chain import class_job_params, submit_training
from generation.training_datasets import (
    DatasetError,
    add_images,
    create_dataset,
    delete_dataset,
    delete_image,
    set_caption,
    update_dataset,
)
from generation.training_history import epoch_views, spent, trained_lora
from gpu_worker.params import LR_SCHEDULERS, TRAIN_DEFAULTS, TRAIN_METHODS

# --- serializers ------------------------------------------------------------------------------


class TrainingImageSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()

    class Meta:
        model = TrainingImage
        fields = ["id", "original_name", "caption", "width", "height", "size_bytes", "url"]
        read_only_fields = ["id", "original_name", "width", "height", "size_bytes", "url"]

    def get_url(self, image: TrainingImage) -> str:
        from django.urls import reverse

        return reverse("api-training-image-file", args=[image.dataset_id, image.pk])


class DatasetSerializer(serializers.ModelSerializer):
    images = TrainingImageSerializer(many=True, read_only=True)

    class Meta:
        model = TrainingDataset
        fields = ["id", "name", "trigger_word", "created_at", "images"]
        read_only_fields = ["id", "created_at", "images"]


class DatasetUploadSerializer(serializers.Serializer):
    """multipart/form-data: images and same-name .txt captions, or .zip files of them."""

    name = serializers.CharField(max_length=100)
    trigger_word = serializers.CharField(max_length=100, required=False, allow_blank=True)
    files = serializers.ListField(child=serializers.FileField())


class TrainBlockSerializer(serializers.Serializer):
    dataset_id = serializers.IntegerField()
    output_name = serializers.CharField(help_text="name of the LoRA it becomes (yours, private)")
    trigger_word = serializers.CharField(required=False, help_text="default: the dataset's")
    rank = serializers.IntegerField(required=False, default=TRAIN_DEFAULTS["rank"])
    alpha = serializers.FloatField(required=False, default=TRAIN_DEFAULTS["alpha"])
    learning_rate = serializers.FloatField(required=False, default=TRAIN_DEFAULTS["learning_rate"])
    lr_scheduler = serializers.ChoiceField(LR_SCHEDULERS, required=False, default="constant")
    lr_warmup_steps = serializers.IntegerField(required=False, default=0)
    epochs = serializers.IntegerField(required=False, default=TRAIN_DEFAULTS["epochs"])
    repeats = serializers.IntegerField(required=False, default=TRAIN_DEFAULTS["repeats"])
    batch_size = serializers.IntegerField(required=False, default=1)
    resolution = serializers.IntegerField(required=False, default=TRAIN_DEFAULTS["resolution"])
    train_text_encoder = serializers.BooleanField(required=False, default=False)
    method = serializers.ChoiceField(
        TRAIN_METHODS, required=False, default="lora", help_text="textual_inversion: an embedding"
    )
    num_vectors = serializers.IntegerField(required=False, default=1, help_text="embedding only")
    init_text = serializers.CharField(required=False, default="*", help_text="embedding only")
    class_dataset_id = serializers.IntegerField(
        required=False, allow_null=True, help_text="LoRA with prior preservation: class images"
    )
    class_prompt = serializers.CharField(required=False, help_text="caption of class images")
    prior_loss_weight = serializers.FloatField(required=False, default=1.0)


class TrainingRequestSerializer(serializers.Serializer):
    """A training job: the base checkpoint, the `train` block, and the sample rendered after
    each epoch (prompt, negative_prompt, steps, cfg_scale, width, height, sampler); `seed`
    seeds the training and the samples (-1: random)."""

    checkpoint = serializers.CharField()
    train = TrainBlockSerializer()
    prompt = serializers.CharField(required=False, help_text="the sample prompt")
    negative_prompt = serializers.CharField(required=False)
    steps = serializers.IntegerField(required=False)
    cfg_scale = serializers.FloatField(required=False)
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)
    sampler = serializers.CharField(required=False)
    seed = serializers.IntegerField(required=False)


class EpochSerializer(serializers.Serializer):
    epoch = serializers.IntegerField()
    steps = serializers.IntegerField()
    loss = serializers.FloatField(allow_null=True)
    prior_loss = serializers.FloatField(allow_null=True, help_text="on class images")
    losses = serializers.ListField(child=serializers.FloatField())
    charged = serializers.DecimalField(max_digits=12, decimal_places=2)
    sample_url = serializers.CharField(allow_null=True)
    lora_url = serializers.CharField()
    lora_size_bytes = serializers.IntegerField()


class TrainingJobSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    checkpoint = serializers.CharField()
    price = serializers.DecimalField(max_digits=12, decimal_places=2)
    spent = serializers.DecimalField(max_digits=12, decimal_places=2)
    steps_done = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    error = serializers.CharField()
    train = serializers.DictField()
    epochs = EpochSerializer(many=True)
    lora = serializers.CharField(
        allow_null=True, help_text="your LoRA's (or embedding's) name once it succeeded"
    )


def job_data(job: Job) -> dict[str, Any]:
    train = dict(job.params.get("train") or {})
    train.pop("images", None)
    lora = trained_lora(job)
    return {
        "id": job.pk,
        "status": job.status,
        "checkpoint": job.checkpoint.name,
        "price": job.price,
        "spent": spent(job),
        "steps_done": job.steps_done,
        "total_steps": job.total_steps,
        "error": job.error,
        "train": train,
        "epochs": [vars(e) for e in epoch_views(job)],
        "lora": lora.name if lora else None,
    }


def _dataset_error(exc: DatasetError) -> Response:
    return Response(exc.as_dict(), status=exc.status)


def _uploads(request: Request) -> list[tuple[str, Any]]:
    return [(f.name or "file", f) for f in request.FILES.getlist("files")]


def training_params(data: Any) -> dict[str, Any]:
    """A training request as submit_job takes it: mode "train", the sample fields, the block."""
    if not isinstance(data, dict):
        raise SubmissionError("params", "the request body must be a JSON object", 400)
    sample = ("prompt", "negative_prompt", "steps", "cfg_scale", "width", "height", "sampler")
    params = {k: data[k] for k in (*sample, "checkpoint", "seed") if k in data}
    unknown = sorted(set(data) - set(params) - {"train"})
    if unknown:
        raise SubmissionError(unknown[0], f"unknown field {unknown[0]!r}", 400)
    return {"mode": "train", "train": data.get("train"), **params}


# --- datasets ---------------------------------------------------------------------------------


class DatasetListView(APIView):
    @extend_schema(responses=DatasetSerializer(many=True), summary="My training datasets")
    def get(self, request: Request) -> Response:
        datasets = TrainingDataset.objects.owned_by(request.user).prefetch_related("images")
        return Response(DatasetSerializer(datasets, many=True).data)

    @extend_schema(
        request={"multipart/form-data": DatasetUploadSerializer},
        responses={201: DatasetSerializer, **ERRORS},
        summary="Upload a dataset (images + same-name .txt captions, or zips of them)",
    )
    def post(self, request: Request) -> Response:
        data: Any = request.data
        try:
            dataset = create_dataset(
                request.user, data.get("name"), data.get("trigger_word", ""), _uploads(request)
            )
        except DatasetError as exc:
            return _dataset_error(exc)
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


def _dataset(request: Request, pk: int) -> TrainingDataset:
    return get_object_or_404(TrainingDataset.objects.owned_by(request.user), pk=pk)


class DatasetDetailView(APIView):
    @extend_schema(responses={200: DatasetSerializer, 404: ERRORS[404]})
    def get(self, request: Request, pk: int) -> Response:
        return Response(DatasetSerializer(_dataset(request, pk)).data)

    @extend_schema(request=DatasetSerializer, responses={200: DatasetSerializer, **ERRORS})
    def patch(self, request: Request, pk: int) -> Response:
        dataset = _dataset(request, pk)
        data = request.data if isinstance(request.data, dict) else {}
        try:
            update_dataset(
                request.user, dataset, {k: data[k] for k in data if k in ("name", "trigger_word")}
            )
        except DatasetError as exc:
            return _dataset_error(exc)
        return Response(DatasetSerializer(dataset).data)

    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, pk: int) -> Response:
        try:
            delete_dataset(request.user, _dataset(request, pk))
        except DatasetError as exc:
            return _dataset_error(exc)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DatasetImagesView(APIView):
    @extend_schema(
        request={"multipart/form-data": DatasetUploadSerializer},
        responses={201: DatasetSerializer, **ERRORS},
        summary="Add images (and captions) to a dataset",
    )
    def post(self, request: Request, pk: int) -> Response:
        dataset = _dataset(request, pk)
        try:
            add_images(request.user, dataset, _uploads(request))
        except DatasetError as exc:
            return _dataset_error(exc)
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)


def _image(request: Request, pk: int, image_pk: int) -> TrainingImage:
    return get_object_or_404(TrainingImage, pk=image_pk, dataset=_dataset(request, pk))


class DatasetImageView(APIView):
    @extend_schema(
        request=inline_serializer("CaptionEdit", {"caption": serializers.CharField()}),
        responses={200: TrainingImageSerializer, **ERRORS},
        summary="Edit an image's caption",
    )
    def patch(self, request: Request, pk: int, image_pk: int) -> Response:
        image = _image(request, pk, image_pk)
        data = request.data if isinstance(request.data, dict) else {}
        try:
            set_caption(request.user, image, data.get("caption"))
        except DatasetError as exc:
            return _dataset_error(exc)
        return Response(TrainingImageSerializer(image).data)

    @extend_schema(responses={204: None, **ERRORS})
    def delete(self, request: Request, pk: int, image_pk: int) -> Response:
        try:
            delete_image(request.user, _image(request, pk, image_pk))
        except DatasetError as exc:
            return _dataset_error(exc)
        return Response(status=status.HTTP_204_NO_CONTENT)


class DatasetImageFileView(APIView):
    @extend_schema(responses={(200, "image/png"): bytes}, summary="A dataset image (re-encoded)")
    def get(self, request: Request, pk: int, image_pk: int) -> FileResponse:
        image = _image(request, pk, image_pk)
        return FileResponse(image.file.open("rb"), content_type="image/png")


# --- training jobs ----------------------------------------------------------------------------


def _job(request: Request, pk: Any) -> Job:
    return get_object_or_404(
        Job.objects.owned_by(request.user).filter(mode=Job.Mode.TRAIN).select_related("checkpoint"),
        pk=pk,
    )


class TrainingJobListView(APIView):
    @extend_schema(responses=TrainingJobSerializer(many=True), summary="My training jobs")
    def get(self, request: Request) -> Response:
        jobs = Job.objects.owned_by(request.user).filter(mode=Job.Mode.TRAIN)
        return Response([job_data(j) for j in jobs.select_related("checkpoint")[:50]])

    @extend_schema(
        request=TrainingRequestSerializer,
        responses={201: TrainingJobSerializer, **ERRORS},
        summary="Train a LoRA (credits: every epoch held now, each charged as it finishes)",
    )
    def post(self, request: Request) -> Response:
        try:
            job = submit_training(request.user, training_params(request.data))
        except SubmissionError as exc:
            return error_response(exc)
        return Response(job_data(job), status=status.HTTP_201_CREATED)


class TrainingQuoteView(APIView):
    @extend_schema(
        request=TrainingRequestSerializer,
        responses={
            200: inline_serializer(
                "TrainingQuote",
                {
                    "price": serializers.DecimalField(max_digits=12, decimal_places=2),
                    "epoch_price": serializers.DecimalField(max_digits=12, decimal_places=2),
                    "total_steps": serializers.IntegerField(),
                    "class_images_price": serializers.DecimalField(
                        max_digits=12,
                        decimal_places=2,
                        help_text="the txt2img job making class images (class_count), else 0",
                    ),
                },
            ),
            **ERRORS,
        },
        summary="Price of a training job without starting it",
    )
    def post(self, request: Request) -> Response:
        try:
            valid = quote_job(request.user, training_params(request.data))
            class_request = class_job_params(valid.params)  # type: ignore[arg-type]
            extra = quote_job(request.user, class_request).price if class_request else 0
        except SubmissionError as exc:
            return error_response(exc)
        epochs = valid.params["train"]["epochs"]
        return Response(
            {
                "price": valid.price,
                "epoch_price": valid.price / epochs,
                "total_steps": valid.total_steps,
                "class_images_price": extra,
            }
        )


class TrainingJobDetailView(APIView):
    @extend_schema(responses={200: TrainingJobSerializer, 404: ERRORS[404]})
    def get(self, request: Request, pk: Any) -> Response:
        return Response(job_data(_job(request, pk)))


def _epoch(request: Request, pk: Any, epoch: int) -> TrainingEpoch:
    row = TrainingEpoch.objects.filter(job=_job(request, pk), epoch=epoch).first()
    if row is None:
        raise Http404("no such epoch")
    return row


class EpochLoraView(APIView):
    @extend_schema(
        responses={(200, "application/octet-stream"): bytes},
        summary="Download an epoch's LoRA (kohya/A1111 safetensors)",
    )
    def get(self, request: Request, pk: Any, epoch: int) -> FileResponse:
        row = _epoch(request, pk, epoch)
        name = f"{row.job.params['train']['output_name']}-{epoch:06d}.safetensors"
        return FileResponse(row.lora.open("rb"), as_attachment=True, filename=name)


class EpochSampleView(APIView):
    @extend_schema(responses={(200, "image/png"): bytes}, summary="An epoch's sample image")
    def get(self, request: Request, pk: Any, epoch: int) -> FileResponse:
        row = _epoch(request, pk, epoch)
        if not row.sample:
            raise Http404("no sample")
        return FileResponse(row.sample.open("rb"), content_type="image/png")
