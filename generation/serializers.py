"""JSON shapes of the REST API. Input is validated by the submission service, not here: these
request serializers exist to document the API (OpenAPI) and shape responses."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from generation.lifecycle import image_payload
from generation.models import CatalogEntry, Job, JobImage
from generation.queue import QueueSnapshot, queue_snapshot, running_eta


class ImageSerializer(serializers.ModelSerializer):
    url = serializers.SerializerMethodField()
    thumbnail_url = serializers.SerializerMethodField()
    job = serializers.UUIDField(source="job_id", read_only=True)
    checkpoint = serializers.CharField(source="job.checkpoint.name", read_only=True)

    class Meta:
        model = JobImage
        fields = [
            "id",
            "job",
            "url",
            "thumbnail_url",
            "seed",
            "infotext",
            "width",
            "height",
            "checkpoint",
            "created_at",
        ]

    def get_url(self, image: JobImage) -> str:
        return image_payload(image)["url"]

    def get_thumbnail_url(self, image: JobImage) -> str:
        return image_payload(image)["thumbnail_url"]


class JobImageSerializer(ImageSerializer):
    class Meta(ImageSerializer.Meta):
        fields = ["id", "url", "thumbnail_url", "seed", "infotext", "width", "height"]


class JobSerializer(serializers.ModelSerializer):
    """A job as the API shows it; queued jobs carry their place in the queue and an ETA."""

    checkpoint = serializers.CharField(source="checkpoint.name", read_only=True)
    position = serializers.SerializerMethodField()
    eta = serializers.SerializerMethodField()
    eta_source = serializers.SerializerMethodField()
    images = JobImageSerializer(many=True, read_only=True)
    cancel_requested = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "status",
            "mode",
            "params",
            "checkpoint",
            "price",
            "position",
            "eta",
            "eta_source",
            "created_at",
            "started_at",
            "finished_at",
            "error",
            "steps_done",
            "total_steps",
            "cancel_requested",
            "images",
        ]

    _queue: QueueSnapshot | None = None  # read once per response (a list shares its child)

    def _snapshot(self) -> QueueSnapshot:
        if self._queue is None:
            self._queue = queue_snapshot()
        return self._queue

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_position(self, job: Job) -> int | None:
        if job.status != Job.Status.QUEUED:
            return None
        info = self._snapshot().get(job.pk)
        return info.position if info else None

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_eta(self, job: Job) -> float | None:
        """Seconds until the job should be finished."""
        if job.status == Job.Status.RUNNING:
            return running_eta(job)
        if job.status != Job.Status.QUEUED:
            return None
        info = self._snapshot().get(job.pk)
        return info.eta if info else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_eta_source(self, job: Job) -> str | None:
        if job.status != Job.Status.QUEUED:
            return None
        info = self._snapshot().get(job.pk)
        return info.source if info else None

    def get_cancel_requested(self, job: Job) -> bool:
        return job.cancel_requested_at is not None


class HiresRequestSerializer(serializers.Serializer):
    scale = serializers.FloatField(required=False, default=2.0)
    resize_x = serializers.IntegerField(required=False, default=0)
    resize_y = serializers.IntegerField(required=False, default=0)
    upscaler = serializers.CharField(required=False, default="Latent")
    second_pass_steps = serializers.IntegerField(required=False, default=0)
    denoising_strength = serializers.FloatField(required=False, default=0.7)


class JobRequestSerializer(serializers.Serializer):
    """Every field is optional; defaults come from the model's defaults, then A1111's."""

    checkpoint = serializers.CharField(
        required=False, help_text="Catalogue name; default: your default model"
    )
    prompt = serializers.CharField(
        required=False, allow_blank=True, help_text="A1111 syntax, including <lora:name:weight>"
    )
    negative_prompt = serializers.CharField(required=False, allow_blank=True)
    sampler = serializers.CharField(required=False, help_text="e.g. 'DPM++ 2M'")
    scheduler = serializers.CharField(required=False, help_text="e.g. 'Karras' or 'Automatic'")
    steps = serializers.IntegerField(required=False)
    cfg_scale = serializers.FloatField(required=False)
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)
    seed = serializers.IntegerField(required=False, help_text="-1: random")
    batch_size = serializers.IntegerField(required=False)
    n_iter = serializers.IntegerField(required=False)
    clip_skip = serializers.IntegerField(required=False)
    vae = serializers.CharField(required=False, allow_null=True)
    mode = serializers.ChoiceField(choices=Job.Mode.choices, required=False)
    init_image = serializers.CharField(
        required=False, help_text="img2img source: base64 (data URI allowed) or a file upload"
    )
    denoising_strength = serializers.FloatField(required=False)
    resize_mode = serializers.IntegerField(required=False)
    hires = HiresRequestSerializer(required=False, allow_null=True)


class QuoteSerializer(serializers.Serializer):
    price = serializers.DecimalField(max_digits=12, decimal_places=2)
    total_steps = serializers.IntegerField()
    params = serializers.DictField()
    checkpoint = serializers.CharField()
    eta = serializers.FloatField(help_text="Seconds the job itself should take once started")
    eta_source = serializers.CharField()


class CatalogEntrySerializer(serializers.ModelSerializer):
    title = serializers.CharField(read_only=True)
    # A declared field, not Field.label: DRF's metaclass moves it into _declared_fields.
    label = serializers.CharField(read_only=True)  # type: ignore[assignment]

    class Meta:
        model = CatalogEntry
        fields = [
            "name",
            "title",
            "label",
            "display_name",
            "description",
            "kind",
            "family",
            "filename",
            "size_bytes",
            "short_hash",
            "sha256",
            "is_demo",
            "available",
            "cost_multiplier",
            "default_params",
            "trigger_words",
        ]


class SamplerSerializer(serializers.Serializer):
    name = serializers.CharField()
    aliases = serializers.ListField(child=serializers.CharField())
    options = serializers.DictField()


class SchedulerSerializer(serializers.Serializer):
    name = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a declared field, as above


class SamplerListSerializer(serializers.Serializer):
    samplers = SamplerSerializer(many=True)
    schedulers = SchedulerSerializer(many=True)


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField()
    is_staff = serializers.BooleanField()
    balance = serializers.DecimalField(
        max_digits=12, decimal_places=2, allow_null=True, help_text="null until credits exist"
    )
    tier = serializers.CharField(allow_null=True)
    default_checkpoint = serializers.CharField(allow_null=True)
    last_params = serializers.DictField()
    limits = serializers.DictField()
    unfinished_jobs = serializers.IntegerField()


class DefaultModelSerializer(serializers.Serializer):
    checkpoint = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    field = serializers.CharField()
    detail = serializers.CharField()


def job_json(job: Job, context: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(JobSerializer(job, context=context or {}).data)
