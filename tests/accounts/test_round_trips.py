"""Statements sent together (accounts/round_trips.py): on PostgreSQL, inside `one_round_trip()`
a statement goes out without the client waiting for its answer; the server still runs them in
order, so a settlement's read sent with its row lock sees what the lock's previous holder
committed. Elsewhere the block changes nothing."""

from __future__ import annotations

import threading
import time
import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction

from accounts import ledger
from accounts.models import CreditEntry
from accounts.round_trips import one_round_trip
from tests.accounts.conftest import balance_of, held_of, set_balance

on_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="pipelining is PostgreSQL's (SQLite has no server)"
)
TOUCH_USER = "UPDATE accounts_user SET last_login = last_login WHERE id = %s"


@on_postgres
@pytest.mark.django_db
def test_statements_in_the_block_go_out_without_waiting_for_their_answers(alice):
    with transaction.atomic(), one_round_trip():
        touching, reading = connection.cursor(), connection.cursor()
        touching.execute(TOUCH_USER, [alice.pk])
        assert touching.rowcount == -1  # its answer not read yet: nothing was waited for
        with one_round_trip():  # a block inside does not send what is queued on its own
            assert touching.rowcount == -1
        reading.execute("SELECT 1")
        assert reading.fetchone() == (1,)  # a fetch waits for every answer so far
        assert touching.rowcount == 1


@pytest.mark.skipif(connection.vendor == "postgresql", reason="the other databases' case")
@pytest.mark.django_db
def test_outside_postgresql_the_block_changes_nothing(alice):
    with one_round_trip(), connection.cursor() as cursor:
        cursor.execute(TOUCH_USER, [alice.pk])
        assert cursor.rowcount == 1  # answered at once


def _wait_until_a_statement_waits_for_a_lock() -> None:
    """Until another connection of this test database waits for a row lock (the second
    settlement, behind the first's)."""
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.01)
    raise AssertionError("the second settlement never waited for the account's lock")


@on_postgres
@pytest.mark.django_db(transaction=True)
def test_a_settlement_that_waited_for_the_lock_sees_the_first_ones_entry(alice):
    """The lock and the read go in one round trip: the read still runs after the lock is
    granted, with a new snapshot, so the second settlement finds the job settled and writes
    nothing (a read in the lock's own snapshot would miss it and hit the unique constraint)."""
    set_balance(alice, 10)
    job_id = uuid.uuid4()
    ledger.hold(alice, 3, job_id)
    locked, let_go = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                outcome["first"] = ledger.capture(job_id)
                locked.set()
                let_go.wait(10)  # commit only once the second waits for the account
        finally:
            locked.set()
            connection.close()

    def second() -> None:
        try:
            locked.wait(10)
            outcome["second"] = ledger.release(job_id)
        except Exception as exc:  # checked below
            outcome["second"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    try:
        _wait_until_a_statement_waits_for_a_lock()
    finally:
        let_go.set()
        for thread in threads:
            thread.join(10)
    assert isinstance(outcome["first"], CreditEntry)
    assert outcome["second"] is None
    settlements = CreditEntry.objects.filter(job_id=job_id, kind__in=CreditEntry.SETTLEMENTS)
    assert [entry.kind for entry in settlements] == [CreditEntry.Kind.CAPTURE]
    assert (balance_of(alice), held_of(alice)) == (Decimal("7.00"), Decimal("0.00"))
