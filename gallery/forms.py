from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from gallery.feed import Sort
from gallery.models import GalleryPreferences, Publication, Report


class PublishForm(forms.ModelForm):
    class Meta:
        model = Publication
        fields = ["title", "description", "visibility", "mature"]
        widgets = {
            "description": forms.Textarea(attrs={"rows": 3}),
            "visibility": forms.RadioSelect,
        }


class ReportForm(forms.Form):
    reason = forms.ChoiceField(label=_("Reason"), choices=Report.Reason.choices)
    details = forms.CharField(
        label=_("Details (optional)"),
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
    )


class PreferencesForm(forms.ModelForm):
    class Meta:
        model = GalleryPreferences
        fields = ["show_mature"]


class FeedFilterForm(forms.Form):
    sort = forms.ChoiceField(label=_("Sort"), choices=Sort.choices, required=False)
    model = forms.CharField(label=_("Model"), required=False, max_length=200)
    q = forms.CharField(label=_("Search"), required=False, max_length=200)


class PngInfoForm(forms.Form):
    image = forms.FileField(
        label=_("PNG image"),
        widget=forms.ClearableFileInput(attrs={"accept": "image/png"}),
    )


class ModerationForm(forms.Form):
    ACTIONS = [
        ("hide", _("Hide")),
        ("restore", _("Restore")),
        ("mature", _("Mark mature")),
        ("not-mature", _("Remove mature mark")),
        ("dismiss", _("Dismiss reports")),
        ("actioned", _("Close reports as actioned")),
    ]
    action = forms.ChoiceField(choices=ACTIONS)
    reason = forms.CharField(required=False, max_length=500)


class SuspendForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), max_length=500)
