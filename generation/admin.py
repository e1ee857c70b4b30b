from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import MembershipTier
from generation.catalogue_admin import CatalogEntryAdmin
from generation.models import CatalogEntry, Job, JobImage, PromptStyle, UserGenerationSettings
from generation.stuck_jobs import redispatch_stuck_job
from generation.submission import SubmissionError, cancel_job
from generation.tier_admin import MembershipTierAdmin

admin.site.register(CatalogEntry, CatalogEntryAdmin)
admin.site.register(MembershipTier, MembershipTierAdmin)


@admin.register(PromptStyle)
class PromptStyleAdmin(admin.ModelAdmin):
    """Staff publish shared styles here (no owner: every member sees them)."""

    list_display = ("name", "owner", "updated_at")
    list_filter = (("owner", admin.EmptyFieldListFilter),)
    search_fields = ("name", "prompt", "owner__username")
    raw_id_fields = ("owner",)


# What the GPU worker reports in Job.timings, in the order the hops happen.
WORKER_TIMINGS = (
    ("queued_s", gettext_lazy("in the GPU queue (message sent -> worker took it)")),
    ("model_load_s", gettext_lazy("getting the model")),
    ("sampling_s", gettext_lazy("sampling")),
    ("encode_s", gettext_lazy("decoding and encoding images")),
    ("total_s", gettext_lazy("total on the worker")),
)


class JobImageInline(admin.TabularInline):
    model = JobImage
    extra = 0
    fields = ("thumbnail_tag", "index", "seed", "width", "height", "file")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The images are part of the job's record: whoever may see the job sees them.
        return request.user.has_perm("generation.view_job") or super().has_view_permission(
            request, obj
        )

    @admin.display(description=gettext_lazy("image"))
    def thumbnail_tag(self, image: JobImage) -> str:
        from django.urls import reverse

        url = reverse("generation-image-thumb", args=[image.pk])
        return format_html('<img src="{}" alt="" width="96">', url)


class WorkerFilter(admin.SimpleListFilter):
    title = gettext_lazy("worker")
    parameter_name = "worker"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        ids = (
            Job.objects.exclude(worker_id="")
            .order_by("worker_id")
            .values_list("worker_id", flat=True)
            .distinct()[:100]
        )
        return [(worker_id, worker_id) for worker_id in ids]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(worker_id=self.value()) if self.value() else queryset


def _seconds_between(start: Any, end: Any) -> str:
    return f"{(end - start).total_seconds():.2f} s" if start and end else "–"


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "owner",
        "status",
        "mode",
        "checkpoint",
        "price",
        "attempt",
        "worker_id",
        "created_at",
        "finished_at",
    )
    list_filter = (
        "status",
        "mode",
        ("owner", admin.RelatedOnlyFieldListFilter),
        ("checkpoint", admin.RelatedOnlyFieldListFilter),
        WorkerFilter,
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("id", "owner__username", "worker_id", "error")
    date_hierarchy = "created_at"
    list_select_related = ("owner", "checkpoint")
    inlines = [JobImageInline]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "id",
                    "owner",
                    "status",
                    "mode",
                    "checkpoint",
                    "price",
                    "attempt",
                    "worker_id",
                    "progress",
                    "error",
                )
            },
        ),
        (gettext_lazy("Parameters"), {"fields": ("parameters", "init_image", "mask_image")}),
        (gettext_lazy("Timings"), {"fields": ("hops",)}),
    )
    # State changes go through the model's transitions, never a form.
    readonly_fields = (
        *[f.name for f in Job._meta.fields],
        "progress",
        "parameters",
        "hops",
    )

    actions = ["cancel_jobs", "redispatch_jobs"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description=gettext_lazy("steps"))
    def progress(self, job: Job) -> str:
        cancel = _(" · cancel requested") if job.cancel_requested_at else ""
        return f"{job.steps_done}/{job.total_steps}{cancel}"

    @admin.display(description=gettext_lazy("parameters"))
    def parameters(self, job: Job) -> str:
        return format_html(
            '<pre class="job-params">{}</pre>', json.dumps(job.params, indent=2, sort_keys=True)
        )

    @admin.display(description=gettext_lazy("per hop"))
    def hops(self, job: Job) -> str:
        timings = job.timings or {}
        rows: list[tuple[Any, str]] = [
            (_("submitted"), f"{job.created_at:%Y-%m-%d %H:%M:%S}"),
            (_("submitted -> dispatched"), _seconds_between(job.created_at, job.dispatched_at)),
            (_("submitted -> started (wait)"), _seconds_between(job.created_at, job.started_at)),
        ]
        for key, label in WORKER_TIMINGS:
            if key in timings:
                value = f"{float(timings[key]):.2f} s"
                if key == "model_load_s" and "model_loaded" in timings:
                    value += _(" (loaded)") if timings["model_loaded"] else _(" (cached)")
                rows.append((label, value))
        rows.append(
            (_("started -> finished (run)"), _seconds_between(job.started_at, job.finished_at))
        )
        return format_html(
            '<table class="job-hops">{}</table>',
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
        )

    @admin.action(
        description=gettext_lazy("Cancel selected jobs (credit holds are released)"),
        permissions=["change"],
    )
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        # The same service as the owner's Stop button: a queued job ends at once and its hold
        # is released; a running one is interrupted at its next step.
        cancelled = 0
        for job in queryset.filter(status__in=Job.UNFINISHED):
            try:
                cancel_job(request.user, job)
                cancelled += 1
            except SubmissionError as error:
                self.message_user(request, f"{job.pk}: {error}", messages.WARNING)
        self.message_user(request, _("Cancel requested for %(n)d job(s).") % {"n": cancelled})

    @admin.action(
        description=gettext_lazy("Re-dispatch selected stuck jobs"), permissions=["change"]
    )
    def redispatch_jobs(self, request: HttpRequest, queryset: QuerySet) -> None:
        for job in queryset.select_related("owner", "checkpoint"):
            outcome = redispatch_stuck_job(job)
            self.message_user(
                request,
                _("Job %(job)s: %(outcome)s") % {"job": job.pk, "outcome": outcome.message},
                messages.SUCCESS if outcome.sent else messages.WARNING,
            )


@admin.register(JobImage)
class JobImageAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "job", "index", "seed", "width", "height", "created_at")
    search_fields = ("id", "owner__username")
    list_select_related = ("owner",)
    raw_id_fields = ("job", "owner")


@admin.register(UserGenerationSettings)
class UserGenerationSettingsAdmin(admin.ModelAdmin):
    list_display = ("user", "default_checkpoint", "updated_at")
    raw_id_fields = ("user",)
