"""Statements sent to PostgreSQL together: one round trip for several (psycopg's pipeline mode).

A job's end runs its statements one after the other, and each waits for the server's answer
before the next is sent: ~0.3-0.5 ms a round trip here when the server had idled (the bench's
round-trip line), most of what a short statement costs. Inside `one_round_trip()` the client
stops waiting between them: a statement is sent as it is executed, and the first fetch sends
every statement queued so far and waits for all of their answers at once.

What the server does is unchanged: it runs the statements one after the other, in the order
sent, each with its own snapshot (READ COMMITTED), so a read sent after a row lock still runs
after the lock is granted and sees what its previous holder committed. Only a statement that
needs an earlier one's answer in Python must be sent after a fetch; an error anywhere raises at
the next fetch (or at the block's end) and the caller's transaction rolls back as before.

Inside, no statement whose row count is read (the ORM's `update()` or `delete()`, a conditional
claim): psycopg knows a count only once the answers came, and reports -1 before.

Elsewhere (SQLite: no server to wait for), and inside a block already open, it changes nothing:
a nested pipeline would send what is queued before opening (psycopg syncs on entry).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connections

PIPELINE_OFF = 0  # psycopg.pq.PipelineStatus.OFF


@contextmanager
def one_round_trip(using: str = "default") -> Iterator[None]:
    connection = connections[using]
    if connection.vendor != "postgresql":
        yield
        return
    import psycopg  # (the PostgreSQL backend's driver)

    connection.ensure_connection()
    raw = connection.connection
    open_already = raw.pgconn.pipeline_status != PIPELINE_OFF  # it sends ours with its own
    if open_already or not psycopg.Pipeline.is_supported():  # (a libpq older than 14)
        yield
        return
    with raw.pipeline():
        yield
