"""A member's jobs as the "My jobs" pages show them: what each cost, how long it waited and ran.

Only ever the member's own jobs: there is no parameter naming whose jobs to list.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict

from django.db.models import DecimalField, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce

from accounts.models import CreditEntry
from generation.models import Job

if TYPE_CHECKING:  # django-stubs' helper, a dev dependency
    from django_stubs_ext import WithAnnotations

ZERO = Value(Decimal("0"), output_field=DecimalField(max_digits=12, decimal_places=2))


def _credits_moved() -> Subquery:
    # A job's entries sum to what it consumed: the hold takes the price, the settlement gives
    # back what was not charged, a refund gives back more. So -sum is the charge (or the hold
    # while the job is unfinished).
    return Subquery(
        CreditEntry.objects.filter(job_id=OuterRef("pk"))
        .order_by()
        .values("job_id")
        .annotate(total=Sum("amount"))
        .values("total"),
        output_field=DecimalField(max_digits=12, decimal_places=2),
    )


class Spent(TypedDict):
    credits_spent: Decimal


def member_jobs(
    user: Any, *, status: str = "", model: str = ""
) -> QuerySet[WithAnnotations[Job, Spent]]:
    """The user's jobs, newest first, each with `credits_spent` (the hold while unfinished)."""
    jobs = (
        Job.objects.owned_by(user)
        .select_related("checkpoint")
        .annotate(credits_spent=ZERO - Coalesce(_credits_moved(), ZERO))
        .order_by("-created_at")
    )
    if status in Job.Status.values:
        jobs = jobs.filter(status=status)
    if model:
        jobs = jobs.filter(checkpoint__name=model)
    return jobs


def models_used(user: Any) -> QuerySet[Any]:
    return (
        Job.objects.owned_by(user)
        .values_list("checkpoint__name", flat=True)
        .distinct()
        .order_by("checkpoint__name")
    )


def job_ledger(user: Any, job: Job) -> QuerySet[CreditEntry]:
    """The credit entries of one of the user's own jobs, oldest first."""
    return CreditEntry.objects.of_user(user).for_job(job.pk).order_by("created_at", "id")


def charged(entries: Any) -> Decimal:
    return -sum((entry.amount for entry in entries), Decimal("0"))


def prompt_history(user: Any, limit: int = 50) -> list[str]:
    """The member's last `limit` different prompts, newest first (from their own jobs)."""
    seen: dict[str, None] = {}
    recent = Job.objects.owned_by(user).order_by("-created_at").values_list("params", flat=True)
    for params in recent[: limit * 4].iterator():
        prompt = (params or {}).get("prompt") or ""
        if prompt.strip() and prompt not in seen:
            seen[prompt] = None
            if len(seen) == limit:
                break
    return list(seen)
