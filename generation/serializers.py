"""JSON shapes of the REST API. The job request serializer is the first check of a REST request
and its OpenAPI schema (the fields of gpu_worker.params with their bounds); the submission service
then checks what needs the catalogue and the user."""

from __future__ import annotations

import copy
import functools
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from generation.lifecycle import image_payload
from generation.limits import DEFAULT_LIMITS, GenerationLimits
from generation.models import CatalogEntry, Job, JobImage
from generation.queue import QueueSnapshot, current_snapshot
from generation.scheduling.estimates import running_eta
from generation.submission import (
    CONTROL_RESIZE_MODES,
    HIRES_SCALE,
    MAX_CLIP_SKIP,
    MAX_MASK_BLUR,
    MAX_MASK_PADDING,
    MAX_SEED,
    MAX_SEED_RESIZE,
    MIN_SIDE,
    NOISE_MULTIPLIER,
    RESIZE_MODES,
    SubmissionError,
)
from gpu_worker.params import (
    CONTROL_MODES,
    CONTROLNET_UNIT_DEFAULTS,
    HIRES_DEFAULTS,
    INPAINT_FILLS,
    OUTPAINT_SIDES,
)
from gpu_worker.passes import UPSCALERS
from gpu_worker.preprocessors import PROCESSOR_RES_RANGE, THRESHOLD_RANGE


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


class BuiltOnce(serializers.ModelSerializer):
    """ModelSerializer builds its fields from the model for every instance (a fifth of a
    millisecond for a job); they depend only on the class, so they are built once and each
    instance gets copies. A plain field's copy is shallow: binding it to this serializer sets
    only its own attributes (name, parent, source), and nothing else in it changes after
    construction; a nested serializer binds its child too, so it is copied deeply, as DRF
    copies declared fields (a deep copy of a field runs its constructor again: most of the
    cost of a job's response)."""

    def get_fields(self) -> dict[str, serializers.Field]:
        built = type(self).__dict__.get("_built_fields")
        if built is None:
            built = super().get_fields()
            type(self)._built_fields = built  # type: ignore[attr-defined]
        return {name: _field_copy(field) for name, field in built.items()}


def _field_copy(field: serializers.Field) -> serializers.Field:
    if isinstance(field, serializers.BaseSerializer):
        return copy.deepcopy(field)
    return copy.copy(field)


class JobSerializer(BuiltOnce):
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
            self._queue = current_snapshot()
        return self._queue

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_position(self, job: Job) -> int | None:
        if job.status != Job.Status.QUEUED:
            return None
        info = self._snapshot().place(job)
        return info.position if info else None

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_eta(self, job: Job) -> float | None:
        """Seconds until the job should be finished."""
        if job.status == Job.Status.RUNNING:
            return running_eta(job)
        if job.status != Job.Status.QUEUED:
            return None
        info = self._snapshot().place(job)
        return info.eta if info else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_eta_source(self, job: Job) -> str | None:
        if job.status != Job.Status.QUEUED:
            return None
        info = self._snapshot().place(job)
        return info.source if info else None

    def get_cancel_requested(self, job: Job) -> bool:
        return job.cancel_requested_at is not None


@extend_schema_field(OpenApiTypes.STR)
class InitImageField(serializers.Field):
    """Base64 text (a data URI allowed) or, in a multipart post, an uploaded file."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) or hasattr(data, "read"):
            return data
        raise serializers.ValidationError("must be base64 text or an uploaded file", "invalid")

    def to_representation(self, value: Any) -> Any:
        return value


TIER = "at most your membership tier's limit (GET /api/v1/me/: limits)"


def _int(low: int, high: int, help_text: str = "") -> serializers.IntegerField:
    return serializers.IntegerField(
        required=False, allow_null=True, min_value=low, max_value=high, help_text=help_text
    )


def _float(low: float, high: float, help_text: str = "") -> serializers.FloatField:
    return serializers.FloatField(
        required=False, allow_null=True, min_value=low, max_value=high, help_text=help_text
    )


class HiresRequestSerializer(serializers.Serializer):
    """gpu_worker.params.HiresParams; a field left out takes its default."""

    def __init__(self, *args: Any, limits: GenerationLimits = DEFAULT_LIMITS, **kwargs: Any):
        self.limits = limits
        super().__init__(*args, **kwargs)

    def get_fields(self) -> dict[str, serializers.Field]:
        lim, default = self.limits, HIRES_DEFAULTS
        return {
            "scale": _float(*HIRES_SCALE, f"default {default['scale']}; unused with resize_x/y"),
            "resize_x": _int(
                0,
                lim.max_side,
                "target width, a multiple of 8; 0: from resize_y keeping the "
                "aspect ratio, or from scale",
            ),
            "resize_y": _int(0, lim.max_side, "target height, a multiple of 8; 0: likewise"),
            "upscaler": serializers.CharField(
                required=False,
                allow_null=True,
                allow_blank=True,
                max_length=200,
                help_text=f"default Latent; one of {', '.join(UPSCALERS)}, or the name of an "
                "upscaler model (ESRGAN, Real-ESRGAN) from GET /api/v1/upscalers/",
            ),
            "second_pass_steps": _int(0, lim.max_steps, "steps the hires pass runs; 0: steps"),
            "denoising_strength": _float(0.0, 1.0, "above 0; default 0.7"),
        }


class ControlNetUnitRequestSerializer(serializers.Serializer):
    """One ControlNet unit (gpu_worker.params.ControlNetUnit, sd-webui-controlnet's names); a
    field left out takes its default."""

    default = CONTROLNET_UNIT_DEFAULTS
    image = InitImageField(
        required=False,
        allow_null=True,
        help_text="control image, base64; null: img2img's source image",
    )
    module = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=100,
        help_text="preprocessor (GET controlnet/preprocessors/); default none",
    )
    model = serializers.CharField(help_text="ControlNet catalogue name (GET models?kind=)")
    weight = _float(0.0, 2.0, f"default {default['weight']}")
    guidance_start = _float(0.0, 1.0, "fraction of the steps where the unit starts; default 0")
    guidance_end = _float(0.0, 1.0, "fraction of the steps where it stops; default 1")
    control_mode = serializers.ChoiceField(
        choices=list(CONTROL_MODES), required=False, allow_null=True, help_text="default balanced"
    )
    resize_mode = _int(
        *CONTROL_RESIZE_MODES, "0 just resize, 1 crop and resize (default), 2 resize and fill"
    )
    pixel_perfect = serializers.BooleanField(required=False, allow_null=True)
    processor_res = _int(*PROCESSOR_RES_RANGE, "preprocessor resolution; default 512")
    # Each module's range is its slider's (GET sdapi's controlnet/module_list, module_detail).
    threshold_a = _float(
        *THRESHOLD_RANGE, "the module's first slider (canny: low threshold); default its slider's"
    )
    threshold_b = _float(
        *THRESHOLD_RANGE, "the module's second slider (canny: high threshold); default its slider's"
    )


class InpaintRequestSerializer(serializers.Serializer):
    """gpu_worker.params.InpaintParams with A1111's names; a field left out takes its default
    (A1111's web UI defaults: blur 4, masked content original, whole picture, padding 32)."""

    def __init__(self, *args: Any, limits: GenerationLimits = DEFAULT_LIMITS, **kwargs: Any):
        self.limits = limits
        super().__init__(*args, **kwargs)

    def get_fields(self) -> dict[str, serializers.Field]:
        flag: dict[str, Any] = {"required": False, "allow_null": True}
        side = "outpainting: pixels added on this side, a multiple of 8 (the new area is masked)"
        return {
            "mask_blur": _int(0, MAX_MASK_BLUR, "sets mask_blur_x and mask_blur_y together"),
            "mask_blur_x": _int(0, MAX_MASK_BLUR, "Gaussian blur of the mask edge, pixels"),
            "mask_blur_y": _int(0, MAX_MASK_BLUR),
            "inpainting_fill": _int(
                0,
                len(INPAINT_FILLS) - 1,
                "masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing",
            ),
            "inpaint_full_res": serializers.BooleanField(
                **flag,
                help_text="only masked: the mask's box plus padding is denoised at "
                "width x height and pasted back; the image keeps the source's size",
            ),
            "inpaint_full_res_padding": _int(0, MAX_MASK_PADDING, "pixels, only masked"),
            "inpainting_mask_invert": serializers.BooleanField(
                **flag, help_text="repaint the black part instead"
            ),
            "initial_noise_multiplier": _float(*NOISE_MULTIPLIER, "scales the starting noise"),
            **{name: _int(0, self.limits.max_side, side) for name in OUTPAINT_SIDES},
        }


class JobRequestSerializer(serializers.Serializer):
    """A job request: the fields of gpu_worker.params.GenerationParams (less the derived ones)
    plus the img2img source image, with the caller's tier's bounds (the schema shows the
    default tier's). A field left out or null takes the model's default, then the platform's."""

    def __init__(self, *args: Any, limits: GenerationLimits = DEFAULT_LIMITS, **kwargs: Any):
        self.limits = limits
        super().__init__(*args, **kwargs)

    def get_fields(self) -> dict[str, serializers.Field]:
        # Built once per tier's limits, copied per request as BuiltOnce copies (its docstring)
        return {name: _field_copy(field) for name, field in _request_fields(self.limits).items()}


@functools.lru_cache(maxsize=32)  # a few tiers' limits
def _request_fields(lim: GenerationLimits) -> dict[str, serializers.Field]:
    """The job request's fields with these bounds (JobRequestSerializer)."""
    text: dict[str, Any] = {"required": False, "allow_null": True, "allow_blank": True}
    return {
        "mode": serializers.ChoiceField(
            choices=Job.Mode.choices,
            required=False,
            allow_null=True,
            help_text="default img2img with an init_image, else txt2img",
        ),
        "checkpoint": serializers.CharField(
            **text, help_text="Catalogue name; default: your default model"
        ),
        "vae": serializers.CharField(**text, help_text="Catalogue name; null: the model's"),
        "prompt": serializers.CharField(
            **text,
            max_length=lim.max_prompt_chars,
            help_text="A1111 syntax: (word:1.2), [word], BREAK, <lora:name:weight>",
        ),
        "negative_prompt": serializers.CharField(**text, max_length=lim.max_prompt_chars),
        "sampler": serializers.CharField(**text, help_text="e.g. 'DPM++ 2M' (GET samplers)"),
        "scheduler": serializers.CharField(**text, help_text="e.g. 'Karras' or 'Automatic'"),
        "steps": _int(1, lim.max_steps, TIER),
        "cfg_scale": _float(lim.min_cfg, lim.max_cfg),
        "width": _int(MIN_SIDE, lim.max_side, f"a multiple of 8; {TIER}"),
        "height": _int(MIN_SIDE, lim.max_side, f"a multiple of 8; {TIER}"),
        "seed": _int(-1, MAX_SEED, "-1: random"),
        "batch_size": _int(1, lim.max_images, f"batch_size x n_iter: {TIER}"),
        "n_iter": _int(1, lim.max_images, f"batch_size x n_iter: {TIER}"),
        "clip_skip": _int(1, MAX_CLIP_SKIP),
        "denoising_strength": _float(0.0, 1.0, "img2img strength, above 0"),
        "resize_mode": _int(
            *RESIZE_MODES,
            "img2img: 0 just resize, 1 crop and resize, 2 resize and fill, "
            "3 latent upscale (resizes like 0)",
        ),
        "hires": HiresRequestSerializer(
            limits=lim,
            required=False,
            allow_null=True,
            help_text="txt2img hires fix; null: off. The target counts against max_side "
            "and max_pixels",
        ),
        # A1111's toolset (issue 17)
        "subseed": _int(-1, MAX_SEED, "variation seed; -1: random"),
        "subseed_strength": _float(0.0, 1.0, "0: no variation (txt2img)"),
        "seed_resize_from_w": _int(-1, MAX_SEED_RESIZE, "0 or -1: off"),
        "seed_resize_from_h": _int(-1, MAX_SEED_RESIZE, "0 or -1: off"),
        "tiling": serializers.BooleanField(
            required=False, allow_null=True, help_text="seamless, tileable images"
        ),
        "restore_faces": serializers.BooleanField(
            required=False,
            allow_null=True,
            help_text="face restoration of each image (each detected face, or the whole image)",
        ),
        "face_restoration_model": serializers.ChoiceField(
            choices=["", "GFPGAN", "CodeFormer"],
            required=False,
            allow_blank=True,
            allow_null=True,
            help_text="A1111's face_restoration_model; empty: GFPGAN, or CodeFormer when it is "
            "the only one usable (CodeFormer needs the operator's licence opt-in)",
        ),
        "code_former_weight": _float(0.0, 1.0, "CodeFormer's weight: 0 = maximum effect; 0.5"),
        "styles": serializers.ListField(
            child=serializers.CharField(),
            required=False,
            allow_null=True,
            help_text="names of saved styles (yours or shared), applied in order to both "
            "prompts: {prompt} in a style marks where your prompt goes",
        ),
        "init_image": InitImageField(
            required=False,
            allow_null=True,
            help_text="img2img source: base64 (data URI allowed) or a file upload",
        ),
        "inpaint": InpaintRequestSerializer(
            limits=lim,
            required=False,
            allow_null=True,
            help_text="img2img inpainting / outpainting options; on with a mask or "
            "outpaint sides. The outpainted canvas counts against max_side and max_pixels",
        ),
        "mask": InitImageField(
            required=False,
            allow_null=True,
            help_text="inpaint mask: white (or painted alpha) is repainted; base64 or a file "
            "upload; stretched to the source's size",
        ),
        "controlnet": ControlNetUnitRequestSerializer(
            many=True,
            required=False,
            allow_null=True,
            help_text=f"ControlNet units; {TIER} (max_controlnet_units)",
        ),
    }


def check_job_request(data: Any, limits: GenerationLimits) -> None:
    """Refuse what the request serializer refuses, as the submission service words it: the
    first field in error, 422 out of bounds, 400 otherwise."""
    serializer = JobRequestSerializer(data=data, limits=limits)
    if not isinstance(data, dict) or serializer.is_valid():
        return  # the service answers a body that is not an object
    name, problems = next(iter(serializer.errors.items()))
    field: Any = serializer.fields[name]
    if isinstance(field, serializers.ListSerializer):  # the ControlNet units: {index: errors}
        index, unit = next(iter(problems.items())) if isinstance(problems, dict) else (0, {})
        if isinstance(index, int) and isinstance(unit, dict) and unit:
            inner, problems = next(iter(unit.items()))  # the first unit in error
            unit_fields = ControlNetUnitRequestSerializer().fields
            field, name = unit_fields.get(inner, field), f"{name}[{index}].{inner}"
        elif isinstance(problems, dict):  # not a list at all
            problems = next(iter(problems.values()))
    elif isinstance(problems, dict) and not hasattr(field, "fields"):  # a list's item: styles
        problems = next(iter(problems.values()))
    elif isinstance(problems, dict):  # a nested object (hires, inpaint)
        inner, problems = next(iter(problems.items()))
        if inner in field.fields:  # else not an object at all: the error is hires's own
            field, name = field.fields[inner], f"{name}.{inner}"
    problem = problems[0] if isinstance(problems, list) else problems
    code = getattr(problem, "code", "")
    if code in ("min_value", "max_value"):
        low, high = (
            f"{v:g}" if isinstance(v, float) else v for v in (field.min_value, field.max_value)
        )
        raise SubmissionError(name, f"{name} must be between {low} and {high}", 422)
    if code == "max_length":
        length = len(str(data.get(name, "")))
        raise SubmissionError(
            name, f"{name} is {length} characters; the limit is {field.max_length}", 422
        )
    if code == "invalid_choice":
        valid = ", ".join(map(str, field.choices))
        raise SubmissionError(name, f"{name}: {problem} Valid: {valid}", 422)
    raise SubmissionError(name, f"{name}: {problem}")


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
