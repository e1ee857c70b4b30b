from django.contrib import admin

from gallery.models import GalleryPreferences, Like, Publication, Report


class ReportInline(admin.TabularInline):
    model = Report
    extra = 0
    fields = ["reporter", "reason", "details", "created_at", "resolution", "resolved_by"]
    readonly_fields = ["reporter", "reason", "details", "created_at"]
    raw_id_fields = ["resolved_by"]


@admin.register(Publication)
class PublicationAdmin(admin.ModelAdmin):
    list_display = [
        "pk",
        "title",
        "owner",
        "visibility",
        "mature",
        "hidden",
        "likes_count",
        "published_at",
    ]
    list_filter = ["visibility", "mature", "hidden"]
    search_fields = ["title", "owner__username", "image__infotext"]
    raw_id_fields = ["image", "owner"]
    readonly_fields = ["likes_count", "created_at", "updated_at"]
    inlines = [ReportInline]


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ["publication", "reporter", "reason", "created_at", "resolution"]
    list_filter = ["reason", "resolution"]
    raw_id_fields = ["publication", "reporter", "resolved_by"]


@admin.register(Like)
class LikeAdmin(admin.ModelAdmin):
    list_display = ["publication", "user", "created_at"]
    raw_id_fields = ["publication", "user"]


@admin.register(GalleryPreferences)
class GalleryPreferencesAdmin(admin.ModelAdmin):
    list_display = ["user", "show_mature"]
    raw_id_fields = ["user"]
