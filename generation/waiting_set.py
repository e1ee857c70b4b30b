"""The waiting jobs (`JobQuerySet.waiting`) in their order, mirrored in a Redis sorted set, so a
job's place behind the scheduler's window is a rank (O(log n)), not a count of the jobs ahead.

Score: `created_at` in epoch microseconds (exact in a double); member: the job id's canonical
text. Redis orders equal scores by member bytes, which for canonical UUIDs is UUID order, as
PostgreSQL's uuid and SQLite's 32 hex digits order them: ZRANK follows (created_at, id), the
order of the partial index `job_waiting_order`.

Kept by the paths that make a job waiting or take it out, each after its commit: a submission
(in the dispatcher's wake-up round trip, `scheduling.wakeups.ring`), a return to the queue
(`Job.return_to_queue`), a training's `after` released (`class_images`), a claim (pipelined
with the pass's lock release, `dispatcher.schedule_pending`), a cancel
(`lifecycle.cancel_queued_job`). A path missed (a crash between commit and Redis, a deleted
account's jobs) is repaired by the dispatcher: the window after each pass
(`queue.store_snapshot`, from the window it read exactly from the database), the rest a slice
a second (`scheduling.waiting_scrub`); a job missing from the set is counted in the database
when asked for and added back.

Trusted only while COMPLETE is in it (score -inf, written by a rebuild from the database): a
Redis restarted empty, or a key evicted, loses it with the set, and readers count in the
database until the dispatcher's next pass rebuilds it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import redis
from django.db import transaction

from generation.broker import get_redis

logger = logging.getLogger(__name__)

KEY = "atelier:queue:waiting"
COMPLETE = "*complete"  # not a job id; score -inf, so rank 0: a job's rank counts it
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def score_of(created_at: datetime) -> int:
    """A job's score: its created_at in epoch microseconds, exactly (no float rounding)."""
    return (created_at - _EPOCH) // _MICROSECOND


def datetime_of(score: int) -> datetime:
    """The created_at a score was made from."""
    return _EPOCH + score * _MICROSECOND


def score_of_timestamp(timestamp: float) -> int:
    """`score_of` a POSIX timestamp (`WaitingJob.submitted_at`): the nearest microsecond is the
    created_at it was made from (a double holds it to well under half a microsecond)."""
    return score_of(datetime.fromtimestamp(timestamp, tz=UTC))


def member_of(job_id: Any) -> str:
    return str(job_id)


def add(pipe: Any, entries: Mapping[str, int]) -> None:
    """Queue a ZADD of `entries` (member -> score) on `pipe` (nothing when empty)."""
    if entries:
        pipe.zadd(KEY, dict(entries))


def remove(pipe: Any, members: Iterable[str]) -> None:
    """Queue a ZREM of `members` on `pipe` (nothing when empty)."""
    members = list(members)
    if members:
        pipe.zrem(KEY, *members)


def enter_on_commit(job_id: Any, created_at: datetime) -> None:
    """A job became waiting (taken back, released from its `after`): add it once committed."""
    transaction.on_commit(partial(_send, {member_of(job_id): score_of(created_at)}, []))


def leave_on_commit(job_id: Any) -> None:
    """A waiting job left the queue (cancelled): remove it once committed."""
    transaction.on_commit(partial(_send, {}, [member_of(job_id)]))


def _send(entries: Mapping[str, int], gone: list[str]) -> None:
    """One round trip; a failure leaves the set to the dispatcher's repair."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        add(pipe, entries)
        remove(pipe, gone)
        pipe.execute()
    except (redis.RedisError, OSError):
        logger.warning("waiting set not updated: Redis unreachable")


def ahead_of(member: str, score: int, window: list[str]) -> tuple[int | None, bool]:
    """How many waiting jobs are ahead of `member` (scored `score`), less the `window` jobs ahead
    of it (the snapshot placed those): one round trip, O(log n + len(window)). Also whether the
    set is complete. None where the set cannot say (not complete, or `member` missing from it).
    Raises redis.RedisError (or OSError) when Redis is unreachable."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.zscore(KEY, COMPLETE)
    pipe.zrank(KEY, member)
    if window:
        pipe.zmscore(KEY, window)
    complete, rank, *scores = pipe.execute()
    if complete is None or rank is None:
        return None, complete is not None
    placed = zip(window, scores[0] if window else [], strict=True)
    in_window = sum(1 for m, s in placed if s is not None and (s, m) < (score, member))
    return rank - 1 - in_window, True  # less COMPLETE's rank 0


REPAIR_LIMIT = 400  # members a repair reads at most (the window's, and what is stale among them)


def read_for_repair(pipe: Any, upto: int) -> None:
    """Queue the reads `repair_plan` takes: whether the set is complete, and its members scored
    at most `upto` (the window's last job, or a little before the pass read it)."""
    pipe.zscore(KEY, COMPLETE)
    pipe.zrangebyscore(KEY, "-inf", upto, withscores=True, start=0, num=REPAIR_LIMIT)


def repair_plan(
    window: Mapping[str, int], complete: Any, members: list[tuple[bytes, float]]
) -> tuple[dict[str, int], list[str]] | None:
    """From `read_for_repair`'s answers: what to add (window jobs missing) and remove (members
    that are not window jobs, where only window jobs may be); None: rebuild (not complete)."""
    if complete is None:
        return None
    found = {raw.decode(): score for raw, score in members}
    found.pop(COMPLETE, None)
    stale = [member for member in found if member not in window]
    # Past REPAIR_LIMIT members, the window's later jobs were not read: not known missing.
    reach = max(found.values()) if len(members) >= REPAIR_LIMIT else float("inf")
    missing = {m: s for m, s in window.items() if m not in found and s <= reach}
    return missing, stale
