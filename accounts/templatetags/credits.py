"""`{% credit_balance user as balance %}`: the balance for the header (None: no account yet)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import template

from accounts.models import CreditAccount

register = template.Library()


@register.simple_tag
def credit_balance(user: Any) -> Decimal | None:
    if not getattr(user, "is_authenticated", False):
        return None
    return CreditAccount.objects.filter(pk=user.pk).values_list("balance", flat=True).first()
