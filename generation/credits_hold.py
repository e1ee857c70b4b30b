"""The seam the credits issue fills in: a hold taken with the job, settled exactly once.

`hold_credits` runs inside the submission transaction (it may raise InsufficientCredits, which
submission answers with 402); `capture_hold` / `release_hold` run inside the transaction of the
job's terminal transition, only for the call that won it. All no-ops until credits exist.
"""

from __future__ import annotations

from typing import Any


class InsufficientCredits(Exception):
    """Raised by hold_credits when the balance cannot cover the job's price."""


def hold_credits(user: Any, job: Any) -> None:
    """Reserve job.price from user's balance (no-op until the credits issue)."""


def capture_hold(job: Any) -> None:
    """Turn the hold into a charge: the job succeeded."""


def release_hold(job: Any) -> None:
    """Give the hold back: the job failed or was cancelled (pro-rata charging comes later)."""
