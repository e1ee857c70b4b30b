"""Errors as A1111 clients parse them: the HTTP status and a JSON body with `error` and `detail`.

A1111 (FastAPI) answers `{"error": <exception name>, "detail": ..., "body": ..., "errors": ...}`;
we add `field`, the request field to fix, named as the A1111 client sent it.
"""

from __future__ import annotations

from django.http import JsonResponse

from generation.submission import SubmissionError

ERROR_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    402: "PaymentRequired",
    403: "Forbidden",
    404: "HTTPException",
    409: "Conflict",
    422: "ValidationError",
    429: "TooManyRequests",
    502: "JobFailed",
    503: "ServiceUnavailable",
    504: "Timeout",
}

# Our service's field names -> what an A1111 client calls them.
A1111_FIELDS = {
    "sampler": "sampler_name",
    "checkpoint": "override_settings.sd_model_checkpoint",
    "vae": "override_settings.sd_vae",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
    "face_restoration_model": "override_settings.face_restoration_model",
    "code_former_weight": "override_settings.code_former_weight",
    "init_image": "init_images",
    "hires": "enable_hr",
    "scale": "hr_scale",
    "resize_x": "hr_resize_x",
    "resize_y": "hr_resize_y",
    "hires.resize_x": "hr_resize_x",
    "hires.resize_y": "hr_resize_y",
    "second_pass_steps": "hr_second_pass_steps",
    "upscaler": "hr_upscaler",
    "hires.scale": "hr_scale",
    "hires.second_pass_steps": "hr_second_pass_steps",
    "hires.upscaler": "hr_upscaler",
    "hires.denoising_strength": "denoising_strength",
    "Idempotency-Key": "force_task_id",
    # inpainting: our nested inpaint object holds A1111's own names
    **{
        f"inpaint.{name}": name
        for name in (
            "mask_blur_x",
            "mask_blur_y",
            "inpainting_fill",
            "inpaint_full_res",
            "inpaint_full_res_padding",
            "inpainting_mask_invert",
            "initial_noise_multiplier",
        )
    },
    "inpaint": "mask",
}


class A1111Error(Exception):
    def __init__(
        self, status: int, detail: str, field: str = "", retry_after: int | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.retry_after = retry_after

    @classmethod
    def from_submission(cls, exc: SubmissionError) -> A1111Error:
        field = A1111_FIELDS.get(exc.field, exc.field)
        if field.startswith("controlnet["):  # a unit's field, as the client sent the unit
            field = "alwayson_scripts.controlnet.args" + field[len("controlnet") :]
        detail = exc.message
        if field != exc.field and detail.startswith(exc.field + " "):
            detail = field + detail[len(exc.field) :]  # "scale must be..." -> "hr_scale must be..."
        return cls(exc.status, detail, field)

    def response(self) -> JsonResponse:
        body = {
            "error": ERROR_NAMES.get(self.status, "HTTPException"),
            "detail": self.detail,
            "body": "",
            "errors": self.detail,
            "field": self.field,
        }
        response = JsonResponse(body, status=self.status)
        if self.status == 401:
            response["WWW-Authenticate"] = 'Basic realm="sdapi"'
        elif self.status == 429:
            response["Retry-After"] = str(self.retry_after or 10)
        return response
