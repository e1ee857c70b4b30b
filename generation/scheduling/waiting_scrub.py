"""The waiting set's sweep behind the window: the dispatcher thread compares one slice of it a
second with the database, walking the queue, so a member a path left behind (a cancel whose
removal never reached Redis, a deleted account's jobs) or a job a path never added is set right
within (queue length / SLICE) seconds, not only once the queue has moved it into the window
(`queue.repair_waiting_set` keeps the window itself). One indexed read of SLICE rows and one
or two Redis round trips a turn, whatever the queue length.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q
from django.utils import timezone

from generation import waiting_set
from generation.broker import get_redis
from generation.models import Job

logger = logging.getLogger(__name__)

SLICE = 200  # waiting jobs compared a turn
EVERY_S = 1.0  # at most one slice a second
# Near the queue's end, a job committed after the read may already be in the set: a member
# younger than this at the read is left for the next round.
COMMIT_GRACE_S = 30.0

Key = tuple[int, str]  # (score, member): the waiting order


@dataclass
class WaitingScrub:
    after: Key | None = None  # where the next slice starts (None: at the queue's head)
    last: float = 0.0  # monotonic time of the last slice

    def turn(self) -> tuple[int, int] | None:
        """One slice, if a second has passed since the last: (added, removed), or None when
        it was not its time or the set is not complete (the next snapshot rebuilds it)."""
        if time.monotonic() - self.last < EVERY_S:
            return None
        self.last = time.monotonic()
        rows = _slice_after(self.after)
        end: Key | None = rows[-1] if len(rows) == SLICE else None  # None: to the queue's end
        fixed = compare(rows, self.after, end, timezone.now())
        self.after = end
        return fixed


def _slice_after(after: Key | None) -> list[Key]:
    query = Job.objects.waiting().order_by("created_at", "pk")
    if after is not None:
        at = waiting_set.datetime_of(after[0])
        query = query.filter(Q(created_at__gt=at) | Q(created_at=at, pk__gt=after[1]))
    return [
        (waiting_set.score_of(created_at), waiting_set.member_of(pk))
        for pk, created_at in query.values_list("pk", "created_at")[:SLICE]
    ]


def compare(
    rows: list[Key], after: Key | None, end: Key | None, now: datetime
) -> tuple[int, int] | None:
    """Set the members in (after, end] right against `rows`, the waiting jobs there (end None:
    to the queue's end, less the last COMMIT_GRACE_S)."""
    low = "-inf" if after is None else after[0]
    high = end[0] if end is not None else waiting_set.score_of(now) - int(COMMIT_GRACE_S * 1e6)
    client = get_redis()
    pipe = client.pipeline(transaction=False)
    pipe.zscore(waiting_set.KEY, waiting_set.COMPLETE)
    pipe.zrangebyscore(waiting_set.KEY, low, high, withscores=True, start=0, num=4 * SLICE)
    complete, members = pipe.execute()
    if complete is None:
        return None
    found = [
        (int(score), raw.decode()) for raw, score in members if raw.decode() != waiting_set.COMPLETE
    ]
    if len(members) >= 4 * SLICE and found:  # stale members crowd it: set right what was read
        high = found[-1][0]
    in_range = [
        key for key in found if (after is None or key > after) and (end is None or key <= end)
    ]
    waiting = {key for key in rows if key[0] <= high}
    stale = [member for score, member in in_range if (score, member) not in waiting]
    missing = {member: score for score, member in waiting - set(in_range)}
    if stale or missing:
        pipe = client.pipeline(transaction=False)
        waiting_set.remove(pipe, stale)
        waiting_set.add(pipe, missing)
        pipe.execute()
        logger.info("waiting set swept: %s added, %s removed", len(missing), len(stale))
    return len(missing), len(stale)
