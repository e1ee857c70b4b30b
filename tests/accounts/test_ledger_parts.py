"""Charging a job's hold in parts (a training job's finished epochs): once per key, never more
than is held, the settlement settles only the rest, and the ledger's invariants hold."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from accounts import ledger
from accounts.models import CreditEntry
from tests.accounts.conftest import balance_of, held_of, set_balance

pytestmark = pytest.mark.django_db
D = Decimal


def test_each_part_is_charged_once_and_the_release_gives_back_only_the_rest(alice):
    set_balance(alice, 10)
    job_id = uuid.uuid4()
    ledger.hold(alice, 3, job_id)
    first = ledger.capture_part(job_id, 1, key=f"train:{job_id}:epoch:1")
    again = ledger.capture_part(job_id, 1, key=f"train:{job_id}:epoch:1")
    assert first is not None and first.charged == D("1.00") and again is None
    assert (balance_of(alice), held_of(alice)) == (D("7.00"), D("2.00"))
    assert ledger.find_violations() == []  # an open hold with a part charged is sound

    ledger.release(job_id)  # cancelled after epoch 1
    assert (balance_of(alice), held_of(alice)) == (D("9.00"), D("0.00"))
    assert ledger.charged_so_far(job_id) == D("1.00")
    assert ledger.capture_part(job_id, 1, key=f"train:{job_id}:epoch:2") is None  # settled
    assert ledger.find_violations() == []


def test_parts_never_pass_the_hold_and_a_capture_after_them_charges_what_is_left(alice):
    set_balance(alice, 10)
    job_id = uuid.uuid4()
    ledger.hold(alice, 3, job_id)
    ledger.capture_part(job_id, 2, key="a")
    capped = ledger.capture_part(job_id, 2, key="b")
    assert capped is not None and capped.charged == D("1.00")
    assert ledger.capture_part(job_id, 1, key="c") is None  # nothing left held
    settlement = ledger.capture(job_id)
    assert settlement is not None and settlement.charged == D("0.00")
    assert (balance_of(alice), held_of(alice)) == (D("7.00"), D("0.00"))
    assert ledger.charged_so_far(job_id) == D("3.00")
    assert ledger.find_violations() == []


def test_a_refund_may_reach_what_the_parts_charged(alice, carol):
    set_balance(alice, 10)
    job_id = uuid.uuid4()
    ledger.hold(alice, 3, job_id)
    ledger.capture_part(job_id, 1, key="e1")
    ledger.capture_part(job_id, 1, key="e2")
    ledger.release(job_id)
    ledger.refund(job_id, 2, actor=carol, reason="bad samples")
    with pytest.raises(ledger.LedgerError):
        ledger.refund(job_id, D("0.01"), actor=carol, reason="once more")
    assert balance_of(alice) == D("10.00")
    assert ledger.find_violations() == []
    assert CreditEntry.objects.filter(job_id=job_id, kind="part_capture").count() == 2
