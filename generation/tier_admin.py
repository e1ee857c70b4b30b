"""The membership tiers' admin. It lives with generation's admin because a tier lists the
catalogue's checkpoints it allows (the choices come from CatalogEntry); the model and its admin
URLs stay accounts' (`admin:accounts_membershiptier_*`)."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from accounts.models import MembershipTier
from generation.models import CatalogEntry


class MembershipTierForm(forms.ModelForm):
    allowed_models = forms.MultipleChoiceField(
        label=_("Allowed checkpoints"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Used when 'all models allowed' is off"),
    )

    class Meta:
        model = MembershipTier
        fields = (
            "name",
            "slug",
            "rank",
            "is_default",
            "welcome_grant",
            "grant_amount",
            "grant_period",
            "max_side",
            "max_pixels",
            "max_steps",
            "max_images",
            "max_unfinished_jobs",
            "max_controlnet_units",
            "max_trainings",
            "training_max_images",
            "training_dataset_mb",
            "training_max_pixels",
            "priority_weight",
            "all_models",
            "allowed_models",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = CatalogEntry.objects.checkpoints().values_list("name", flat=True)
        current = list(self.instance.allowed_models or []) if self.instance.pk else []
        choices = [(n, n) for n in dict.fromkeys([*names, *current])]
        cast(forms.MultipleChoiceField, self.fields["allowed_models"]).choices = choices


class MembershipTierAdmin(admin.ModelAdmin):
    form = MembershipTierForm
    list_display = (
        "name",
        "rank",
        "is_default",
        "welcome_grant",
        "grant_amount",
        "grant_period",
        "max_side",
        "max_steps",
        "max_images",
        "max_unfinished_jobs",
        "priority_weight",
        "all_models",
    )
    prepopulated_fields = {"slug": ("name",)}
