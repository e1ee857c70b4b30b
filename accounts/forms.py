from __future__ import annotations

from decimal import Decimal

from django import forms
from django.utils.translation import gettext_lazy as _

from accounts.models import MembershipTier


class ApiTokenForm(forms.Form):
    name = forms.CharField(label=_("Token name"), max_length=64)


class RedeemForm(forms.Form):
    code = forms.CharField(label=_("Code"), max_length=64, strip=True)


class CheckoutForm(forms.Form):
    """What to buy: a credit pack or a membership plan, by id."""

    kind = forms.ChoiceField(choices=[("pack", _("Credit pack")), ("plan", _("Membership"))])
    item = forms.IntegerField(min_value=1)


class AdjustBalanceForm(forms.Form):
    amount = forms.DecimalField(
        label=_("Amount"),
        max_digits=12,
        decimal_places=2,
        help_text=_("Positive adds credits, negative removes them"),
    )
    reason = forms.CharField(label=_("Reason"), max_length=500)

    def clean_amount(self) -> Decimal:
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError(_("An adjustment must change the balance."))
        return amount


class TierChangeForm(forms.Form):
    tier = forms.ModelChoiceField(label=_("Tier"), queryset=MembershipTier.objects.all())
    until = forms.DateTimeField(
        label=_("Until"),
        required=False,
        help_text=_("Back to the default tier after this (YYYY-MM-DD HH:MM); empty: no end"),
    )
    reason = forms.CharField(label=_("Reason"), max_length=500)


class ReasonForm(forms.Form):
    """Suspending or reinstating a member: only the reason, which the log keeps."""

    reason = forms.CharField(label=_("Reason"), max_length=500)
