"""The model catalogue in the admin: fields people edit, which tiers may use a model, and Scan.

Default parameters are edited as separate fields (sampler, steps, CFG, size, clip skip) and kept
in `CatalogEntry.default_params`; which tiers may use a checkpoint is stored on the tiers
(`MembershipTier.allowed_models`) and edited here too. Scan runs the sweeper's catalogue sync:
what the workers' heartbeats and the local models folder hold, the rest marked unavailable.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import redis
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import MembershipTier
from accounts.tiers import set_model_tiers, tiers_allowing
from generation.broker import get_redis
from generation.catalogue_sync import sync_catalogue
from generation.models import CatalogEntry
from generation.own_models import forget_if_unused
from gpu_worker.samplers import SAMPLERS, SCHEDULES

MAX_PREVIEW_BYTES = 5 * 1024 * 1024
# Form field -> key in default_params (the names submission and the A1111 API read).
DEFAULT_PARAM_FIELDS = {
    "default_sampler": "sampler",
    "default_scheduler": "scheduler",
    "default_steps": "steps",
    "default_cfg_scale": "cfg_scale",
    "default_width": "width",
    "default_height": "height",
    "default_clip_skip": "clip_skip",
}


def _side_field(label: Any) -> forms.IntegerField:
    return forms.IntegerField(
        label=label, required=False, min_value=64, max_value=2048, step_size=8
    )


def _cost_multiplier_field() -> forms.DecimalField:
    return forms.DecimalField(
        label=gettext_lazy("Cost multiplier"),
        min_value=0,
        max_value=100,
        max_digits=6,
        decimal_places=2,
        help_text=gettext_lazy("Multiplies the price of every job on this model (0: free)"),
    )


class CatalogListForm(forms.ModelForm):
    """The list's editable columns, with the same bounds as the entry's page."""

    cost_multiplier = _cost_multiplier_field()

    class Meta:
        model = CatalogEntry
        fields = ("enabled", "cost_multiplier")


class CatalogEntryForm(forms.ModelForm):
    default_sampler = forms.ChoiceField(label=gettext_lazy("Default sampler"), required=False)
    default_scheduler = forms.ChoiceField(
        label=gettext_lazy("Default schedule type"), required=False
    )
    default_steps = forms.IntegerField(
        label=gettext_lazy("Default steps"), required=False, min_value=1, max_value=150
    )
    default_cfg_scale = forms.FloatField(
        label=gettext_lazy("Default CFG scale"), required=False, min_value=1, max_value=30
    )
    default_width = _side_field(gettext_lazy("Default width"))
    default_height = _side_field(gettext_lazy("Default height"))
    default_clip_skip = forms.IntegerField(
        label=gettext_lazy("Default clip skip"), required=False, min_value=1, max_value=12
    )
    cost_multiplier = _cost_multiplier_field()
    tiers = forms.ModelMultipleChoiceField(
        label=gettext_lazy("Restricted tiers that may use it"),
        queryset=MembershipTier.objects.filter(all_models=False),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    class Meta:
        model = CatalogEntry
        fields = (
            "name",
            "display_name",
            "kind",
            "family",
            "description",
            "preview",
            "enabled",
            "published",
            "cost_multiplier",
            "trigger_words",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        blank = [("", _("(platform default)"))]
        cast(forms.ChoiceField, self.fields["default_sampler"]).choices = blank + [
            (s.name, s.name) for s in SAMPLERS if s.scheduler_class
        ]
        cast(forms.ChoiceField, self.fields["default_scheduler"]).choices = blank + [
            (s.label, s.label) for s in SCHEDULES
        ]
        params = self.instance.default_params or {}
        for field, key in DEFAULT_PARAM_FIELDS.items():
            self.initial.setdefault(field, params.get(key))
        everyone = MembershipTier.objects.filter(all_models=True).values_list("name", flat=True)
        self.fields["tiers"].help_text = _(
            "Checkpoints only. Tiers allowing every model may always use it: %(tiers)s."
        ) % {"tiers": ", ".join(everyone) or "–"}
        if not self.fields["tiers"].queryset.exists():  # type: ignore[attr-defined]
            # An empty list of checkboxes renders as nothing at all: say why instead.
            self.fields["tiers"].disabled = True
            self.fields["tiers"].help_text = _(
                "Every tier allows every model (%(tiers)s), so there is nothing to choose. "
                "To restrict a tier, untick “all models allowed” on it under Membership tiers."
            ) % {"tiers": ", ".join(everyone) or "–"}
        if self.instance.pk:
            self.initial.setdefault(
                "tiers",
                [t.pk for t in tiers_allowing(self.instance.name) if not t.all_models],
            )

    def clean_preview(self) -> Any:
        preview = self.cleaned_data.get("preview")
        if preview and getattr(preview, "size", 0) > MAX_PREVIEW_BYTES:
            raise forms.ValidationError(
                _("The preview image is %(size)d bytes; the limit is %(limit)d.")
                % {"size": preview.size, "limit": MAX_PREVIEW_BYTES}
            )
        return preview

    def save(self, commit: bool = True) -> CatalogEntry:
        entry = super().save(commit=False)
        params = dict(entry.default_params or {})
        for field, key in DEFAULT_PARAM_FIELDS.items():
            value = self.cleaned_data.get(field)
            if value in (None, ""):
                params.pop(key, None)
            else:
                params[key] = value
        entry.default_params = params
        if commit:
            entry.save()
        return entry


FILE_FIELDS = ("filename", "size_bytes", "sha256", "short_hash", "created_at", "updated_at")


class CatalogEntryAdmin(admin.ModelAdmin):
    form = CatalogEntryForm
    change_list_template = "admin/generation/catalogentry/change_list.html"
    list_display = (
        "name",
        "display_name",
        "kind",
        "family",
        "enabled",
        "available",
        "is_demo",
        "owner",
        "published",
        "cost_multiplier",
        "tier_names",
        "size",
        "short_hash",
    )
    list_filter = ("kind", "enabled", "published", "available", "is_demo", "family")
    list_editable = ("enabled", "cost_multiplier")
    search_fields = ("name", "display_name", "sha256", "short_hash", "trigger_words")
    readonly_fields = (
        "preview_thumbnail",
        "available",
        "is_demo",
        "owner",
        *FILE_FIELDS,
    )
    fieldsets = (
        (None, {"fields": ("name", "display_name", "kind", "family", "description")}),
        (
            gettext_lazy("Availability and price"),
            # A member's upload: "published" shows it to others (within the tiers chosen);
            # "enabled" off hides it from everyone, its owner included.
            {
                "fields": (
                    "owner",
                    "published",
                    "enabled",
                    "available",
                    "is_demo",
                    "cost_multiplier",
                    "tiers",
                )
            },
        ),
        (
            gettext_lazy("Defaults for new jobs"),
            {"fields": tuple(DEFAULT_PARAM_FIELDS)},
        ),
        (gettext_lazy("LoRA"), {"fields": ("trigger_words",)}),
        (gettext_lazy("Preview"), {"fields": ("preview", "preview_thumbnail")}),
        (
            gettext_lazy("File (from the scan)"),
            {"fields": FILE_FIELDS},
        ),
    )

    @admin.display(description=gettext_lazy("tiers"))
    def tier_names(self, entry: CatalogEntry) -> str:
        if entry.kind != CatalogEntry.Kind.CHECKPOINT:
            return _("all")
        return ", ".join(t.name for t in tiers_allowing(entry.name)) or "–"

    @admin.display(description=gettext_lazy("size"), ordering="size_bytes")
    def size(self, entry: CatalogEntry) -> str:
        from django.template.defaultfilters import filesizeformat

        return filesizeformat(entry.size_bytes)

    @admin.display(description=gettext_lazy("current preview"))
    def preview_thumbnail(self, entry: CatalogEntry) -> str:
        if not entry.pk or not entry.preview:
            return "–"
        url = reverse("admin:generation_catalogentry_preview", args=[entry.pk])
        return format_html('<img src="{}" alt="{}" style="max-width:256px">', url, entry.label)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        if form.instance.kind == CatalogEntry.Kind.CHECKPOINT:
            set_model_tiers(
                form.instance.name,
                form.cleaned_data.get("tiers") or [],
                previous_name=form.initial.get("name"),
            )

    def delete_model(self, request: HttpRequest, obj: CatalogEntry) -> None:
        self.delete_queryset(request, CatalogEntry.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[CatalogEntry]) -> None:
        """Stored files (uploads) that no entry refers to any more leave the store and the
        workers' disks, as when a member deletes their own."""
        stored = list(queryset.filter(stored_file__isnull=False).values_list("sha256", flat=True))
        super().delete_queryset(request, queryset)
        for sha256 in stored:
            transaction.on_commit(partial(forget_if_unused, sha256))

    def get_changelist_form(self, request: HttpRequest, **kwargs: Any) -> Any:
        return super().get_changelist_form(request, form=CatalogListForm, **kwargs)

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        extra = {"can_scan": self.has_change_permission(request), **(extra_context or {})}
        return super().changelist_view(request, extra)

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path("scan/", view(self.scan_view), name="generation_catalogentry_scan"),
            path(
                "<int:pk>/preview/",
                view(self.preview_view),
                name="generation_catalogentry_preview",
            ),
            *super().get_urls(),
        ]

    def scan_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_change_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return redirect("admin:generation_catalogentry_changelist")
        try:
            get_redis().ping()
        except (redis.RedisError, OSError):
            # sync_catalogue would skip quietly; say why nothing changed.
            self.message_user(
                request,
                _("Redis is unreachable, so no worker inventory can be read: nothing changed."),
                messages.ERROR,
            )
            return redirect("admin:generation_catalogentry_changelist")
        report = sync_catalogue()
        self.message_user(
            request,
            _(
                "Scan done: %(created)d new, %(updated)d updated, "
                "%(unavailable)d marked unavailable."
            )
            % report,
            messages.SUCCESS,
        )
        return redirect("admin:generation_catalogentry_changelist")

    def preview_view(self, request: HttpRequest, pk: int) -> FileResponse:
        entry = get_object_or_404(CatalogEntry, pk=pk)
        if not self.has_view_or_change_permission(request, entry) or not entry.preview.name:
            raise Http404
        try:
            handle = entry.preview.storage.open(entry.preview.name, "rb")
        except OSError:
            raise Http404 from None
        response = FileResponse(handle)
        response["X-Content-Type-Options"] = "nosniff"
        return response
