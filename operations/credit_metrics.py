"""Credits in and out per day on the operations page, read from the ledger (the record of truth).

Spent: what job settlements charged for good (a capture's charged part; holds and releases move
credits without spending them). Refunded: staff goodwill after a charge. Bought: top-ups paid
through Stripe. Granted: free credits (welcome and periodic grants, redeemed codes, positive staff
adjustments).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import DecimalField, Q, Sum, Value
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from accounts.models import CreditEntry

Kind = CreditEntry.Kind
ZERO = Decimal("0.00")


@dataclass(frozen=True)
class CreditDay:
    day: date
    spent: Decimal
    refunded: Decimal
    bought: Decimal
    granted: Decimal


def _sum(field: str, condition: Q) -> Coalesce:
    money = DecimalField(max_digits=14, decimal_places=2)
    return Coalesce(Sum(field, filter=condition), Value(ZERO, output_field=money))


def credits_per_day(days: int = 14, now: datetime | None = None) -> list[CreditDay]:
    """The last `days` local days, oldest first, empty days included."""
    now = now or timezone.now()
    today = timezone.localdate(now)
    first = today - timedelta(days=days - 1)
    start = timezone.make_aware(datetime.combine(first, datetime.min.time()))
    capture = Q(kind__in=[Kind.CAPTURE, Kind.PART_CAPTURE])  # a part: held_delta alone
    rows = (
        CreditEntry.objects.filter(created_at__gte=start)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(
            capture_amount=_sum("amount", capture),
            capture_held=_sum("held_delta", capture),
            refunded=_sum("amount", Q(kind=Kind.REFUND)),
            bought=_sum("amount", Q(kind=Kind.TOP_UP)),
            granted=_sum(
                "amount",
                Q(kind__in=[Kind.GRANT, Kind.REDEEM]) | Q(kind=Kind.ADJUSTMENT, amount__gt=0),
            ),
        )
    )
    by_day = {row["day"]: row for row in rows}
    result = []
    for i in range(days):
        day = first + timedelta(days=i)
        row = by_day.get(day)
        if row is None:
            result.append(CreditDay(day, ZERO, ZERO, ZERO, ZERO))
            continue
        # A capture returns `amount` of a hold of `-held_delta`: the rest was charged.
        spent = -(row["capture_amount"] + row["capture_held"])
        result.append(
            CreditDay(
                day,
                Decimal(spent).quantize(ZERO),
                Decimal(row["refunded"]).quantize(ZERO),
                Decimal(row["bought"]).quantize(ZERO),
                Decimal(row["granted"]).quantize(ZERO),
            )
        )
    return result
