from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _

from generation.models import CatalogEntry, Job, JobImage, UserGenerationSettings


@admin.register(CatalogEntry)
class CatalogEntryAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "family", "enabled", "available", "is_demo", "cost_multiplier")
    list_filter = ("kind", "enabled", "available", "is_demo", "family")
    list_editable = ("enabled", "cost_multiplier")
    search_fields = ("name", "display_name", "sha256")
    readonly_fields = ("filename", "size_bytes", "sha256", "short_hash", "created_at", "updated_at")


class JobImageInline(admin.TabularInline):
    model = JobImage
    extra = 0
    fields = ("index", "seed", "width", "height", "file")
    readonly_fields = fields
    can_delete = False


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
    list_filter = ("status", "mode", "checkpoint")
    search_fields = ("id", "owner__username", "worker_id")
    date_hierarchy = "created_at"
    list_select_related = ("owner", "checkpoint")
    inlines = [JobImageInline]
    # State changes go through the model's transitions, never a form.
    readonly_fields = [f.name for f in Job._meta.fields]

    actions = ["cancel_jobs"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    @admin.action(
        description=_("Cancel selected jobs (credit holds are released)"), permissions=["change"]
    )
    def cancel_jobs(self, request, queryset):  # type: ignore[no-untyped-def]
        # The same service as the owner's Stop button: a queued job ends at once and its hold
        # is released; a running one is interrupted at its next step.
        from generation.submission import SubmissionError, cancel_job

        cancelled = 0
        for job in queryset.filter(status__in=Job.UNFINISHED):
            try:
                cancel_job(request.user, job)
                cancelled += 1
            except SubmissionError as error:
                self.message_user(request, f"{job.pk}: {error}", messages.WARNING)
        self.message_user(request, _("Cancel requested for %(n)d job(s).") % {"n": cancelled})


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
