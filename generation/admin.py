from django.contrib import admin

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

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False


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
