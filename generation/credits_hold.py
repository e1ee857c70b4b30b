"""The seam between jobs and the credit ledger: a hold taken with the job, settled exactly once.

`hold_credits` runs inside the submission transaction (it may raise InsufficientCredits, which
submission answers with 402); `capture_hold` / `release_hold` run inside the transaction of the
job's terminal transition, only for the call that won it. The ledger itself refuses a second
settlement of the same job, so a repeated message cannot charge or refund twice either.
"""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from accounts import ledger
from accounts.ledger import InsufficientCredits

__all__ = ["InsufficientCredits", "capture_hold", "hold_credits", "release_hold"]


def hold_credits(user: Any, job: Any) -> None:
    """Reserve job.price from user's balance, or raise InsufficientCredits(balance, price)."""
    ledger.hold(user, job.price, job.pk)


def capture_hold(job: Any) -> None:
    """Turn the hold into a charge: the job succeeded."""
    ledger.capture(job.pk)


def release_hold(job: Any) -> None:
    """Settle a job that did not succeed. Failed, cancelled before it started, or lost with its
    worker: all given back. Cancelled while running: the share of its steps that ran is
    charged (rounded down to the cent), the rest given back. A training job: its finished
    epochs are already charged (ledger parts), whatever is still held goes back."""
    if job.mode == "train":  # each finished epoch was charged as it ended: the rest goes back
        ledger.release(job.pk)
    elif job.status == "cancelled" and job.started_at is not None and job.steps_done > 0:
        charge = ledger.pro_rata(job.price, job.steps_done, job.total_steps)
        ledger.capture(
            job.pk,
            charge,
            reason=_("Cancelled after %(done)s of %(total)s steps")
            % {"done": job.steps_done, "total": job.total_steps},
        )
    else:
        ledger.release(job.pk)
