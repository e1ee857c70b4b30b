from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts import ledger
from accounts.models import CreditEntry
from generation.models import CatalogEntry, Job
from gpu_worker.protocol import HEARTBEAT_INDEX, HEARTBEAT_KEY, WORKER_COMMANDS_KEY
from operations.metrics import percentile

pytestmark = pytest.mark.django_db


@pytest.fixture
def checkpoint(db) -> CatalogEntry:
    return CatalogEntry.objects.create(name="model-a", kind="checkpoint")


def make_job(owner, checkpoint, status, created_ago_s, wait_s=None, run_s=None) -> Job:
    now = timezone.now()
    created = now - timedelta(seconds=created_ago_s)
    started = created + timedelta(seconds=wait_s) if wait_s is not None else None
    finished = started + timedelta(seconds=run_s) if run_s is not None and started else None
    return Job.objects.create(
        owner=owner,
        checkpoint=checkpoint,
        status=status,
        params={},
        created_at=created,
        started_at=started,
        finished_at=finished,
    )


def heartbeat(worker_id: str, sent_at: float, **extra) -> dict:
    beat = {
        "worker_id": worker_id,
        "hostname": "box",
        "device": "cuda:0",
        "memory_used_bytes": 2 * 1024**3,
        "memory_budget_bytes": 8 * 1024**3,
        "loaded_models": ["model-a"],
        "current_job": None,
        "current_step": None,
        "current_steps": None,
        "recent_its": 7.5,
        "draining": False,
        "inventory": [],
        "sent_at": sent_at,
    }
    beat.update(extra)
    return beat


@pytest.mark.parametrize("url_name", ["ops", "ops_workers"])
def test_anonymous_visitors_and_members_cannot_reach_the_ops_pages(client, alice, url_name):
    assert client.get(reverse(url_name)).status_code == 302
    client.force_login(alice)
    response = client.get(reverse(url_name))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_a_member_cannot_send_commands_to_workers(client, alice, redis_client):
    client.force_login(alice)
    client.post(reverse("ops_worker_command", args=["w1"]), {"action": "drain"})
    assert redis_client.llen(WORKER_COMMANDS_KEY.format(worker_id="w1")) == 0


def test_ops_numbers_match_a_seeded_set_of_jobs(client, carol, alice, checkpoint):
    other = CatalogEntry.objects.create(name="model-b", kind="checkpoint")
    for _ in range(3):
        make_job(alice, checkpoint, Job.Status.QUEUED, created_ago_s=10)
    make_job(alice, other, Job.Status.QUEUED, created_ago_s=10)
    make_job(alice, checkpoint, Job.Status.RUNNING, created_ago_s=30, wait_s=5)
    # Last hour: waits 2, 4, 6, 8 s; runs 10, 10, 10, 30 s; one of four failed.
    for wait, run, status in [
        (2, 10, "succeeded"),
        (4, 10, "succeeded"),
        (6, 10, "succeeded"),
        (8, 30, "failed"),
    ]:
        make_job(alice, checkpoint, status, created_ago_s=600, wait_s=wait, run_s=run)
    # Two hours ago: only in the day window.
    make_job(alice, checkpoint, "succeeded", created_ago_s=7200, wait_s=100, run_s=20)

    client.force_login(carol)
    response = client.get(reverse("ops"))
    assert response.status_code == 200
    ctx = response.context
    assert ctx["queued_total"] == 4 and ctx["running_total"] == 1
    assert ctx["queue_by_model"] == [("model-a", 3), ("model-b", 1)]
    hour, day = ctx["windows"]
    assert (hour.finished, hour.failed) == (4, 1)
    assert hour.failure_rate == pytest.approx(0.25)
    assert hour.wait.median_s == pytest.approx(5.0)
    assert hour.wait.p95_s == pytest.approx(8.0)
    assert hour.run.median_s == pytest.approx(10.0)
    assert day.finished == 5 and day.wait.p95_s == pytest.approx(100.0)
    assert sum(n for _hour, n in ctx["jobs_per_hour"]) == 10
    assert b"25%" in response.content


def test_percentile_uses_nearest_rank():
    assert percentile([], 0.95) is None
    assert percentile([1.0], 0.95) == 1.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


def test_workers_view_shows_a_live_heartbeat_and_flags_a_stale_and_a_gone_one(
    client, carol, redis_client
):
    now = time.time()
    redis_client.sadd(HEARTBEAT_INDEX, "live-1", "stale-1", "gone-1")
    redis_client.set(
        HEARTBEAT_KEY.format(worker_id="live-1"),
        json.dumps(heartbeat("live-1", now, current_job="abc", current_step=3, current_steps=20)),
        ex=15,
    )
    redis_client.set(
        HEARTBEAT_KEY.format(worker_id="stale-1"), json.dumps(heartbeat("stale-1", now - 12)), ex=15
    )
    client.force_login(carol)
    response = client.get(reverse("ops_workers"))
    states = {w.worker_id: w.state for w in response.context["workers"]}
    assert states == {"live-1": "live", "stale-1": "stale", "gone-1": "gone"}
    html = response.content.decode()
    assert "cuda:0" in html and "model-a" in html and "3/20" in html
    assert 'class="worker-stale"' in html and 'class="worker-gone"' in html


def test_staff_can_ask_a_worker_to_drain_or_unload(client, carol, redis_client):
    client.force_login(carol)
    client.post(reverse("ops_worker_command", args=["w1"]), {"action": "drain"})
    client.post(reverse("ops_worker_command", args=["w1"]), {"action": "unload", "model": "m"})
    bad = client.post(reverse("ops_worker_command", args=["w1"]), {"action": "explode"})
    assert bad.status_code == 400
    queued = [
        json.loads(x)
        for x in redis_client.lrange(WORKER_COMMANDS_KEY.format(worker_id="w1"), 0, -1)
    ]
    assert queued == [{"action": "drain"}, {"action": "unload", "model": "m"}]


def test_ops_queue_by_tier_utilisation_model_loads_and_credits_match_a_seeded_set(
    client, carol, alice, bob, checkpoint
):
    import uuid
    from decimal import Decimal

    from accounts import ledger
    from accounts.models import CreditEntry, MembershipTier
    from accounts.tiers import set_tier

    MembershipTier.objects.update(welcome_grant=0)  # only the entries below count
    now = timezone.now()
    pro = MembershipTier.objects.get(slug="pro")
    set_tier(bob, pro)
    free = ledger.account_for(alice).tier

    # Queue: two of alice's (Free), one of bob's (Pro).
    for owner in (alice, alice, bob):
        make_job(owner, checkpoint, Job.Status.QUEUED, created_ago_s=5)

    # Utilisation: gpu-1 ran 15 min inside the hour, 10 min straddling its start and 1 h
    # three hours ago; gpu-2 has been running for 10 min.
    def ran(worker, started_ago_min, minutes, **extra):
        started = now - timedelta(minutes=started_ago_min)
        return Job.objects.create(
            owner=alice,
            checkpoint=checkpoint,
            params={},
            status=Job.Status.SUCCEEDED if minutes is not None else Job.Status.RUNNING,
            worker_id=worker,
            created_at=started - timedelta(seconds=1),
            started_at=started,
            finished_at=started + timedelta(minutes=minutes) if minutes is not None else None,
            **extra,
        )

    ran("gpu-1", 30, 15, timings={"model_load_s": 4.0, "model_loaded": True})
    ran("gpu-1", 70, 20, timings={"model_load_s": 4.0, "model_loaded": True})
    ran("gpu-1", 180, 60, timings={"model_load_s": 0.001, "model_loaded": False})
    ran("gpu-2", 10, None)
    ran("gpu-3", 26 * 60, 30)  # over a day ago: not counted anywhere

    # Ledger today: 20 bought, 10 granted + 5 added by staff (a -2 correction is not a grant),
    # a 3-credit hold charged 2 then refunded 0.50, a 1-credit hold released (nothing spent).
    ledger.credit(alice, 20, CreditEntry.Kind.TOP_UP, reason="pack")
    ledger.credit(bob, 10, CreditEntry.Kind.GRANT, key="test-grant")
    ledger.adjust(bob, 5, actor=carol, reason="goodwill")
    ledger.adjust(bob, -2, actor=carol, reason="correction")
    charged_job, released_job = uuid.uuid4(), uuid.uuid4()
    ledger.hold(alice, 3, charged_job)
    ledger.capture(charged_job, 2)
    ledger.refund(charged_job, Decimal("0.50"), actor=carol, reason="blurry")
    ledger.hold(alice, 1, released_job)
    ledger.release(released_job)
    # Two days ago: 7 bought.
    old = ledger.credit(alice, 7, CreditEntry.Kind.TOP_UP, reason="older pack")
    assert old is not None
    CreditEntry.objects.filter(pk=old.pk).update(created_at=now - timedelta(days=2))

    client.force_login(carol)
    response = client.get(reverse("ops"))
    ctx = response.context

    assert ctx["queue_by_tier"] == [(free.name, 2), (pro.name, 1)]
    usage = {w.worker_id: w for w in ctx["workers"]}
    assert set(usage) == {"gpu-1", "gpu-2"}
    assert usage["gpu-1"].busy_hour_s == pytest.approx(15 * 60 + 10 * 60, abs=2)
    assert usage["gpu-1"].busy_day_s == pytest.approx((15 + 20 + 60) * 60, abs=2)
    assert usage["gpu-1"].hour_fraction == pytest.approx(25 / 60, abs=0.01)
    assert usage["gpu-2"].busy_hour_s == pytest.approx(10 * 60, abs=5)
    loads = dict(ctx["model_loads_per_hour"])
    assert sum(loads.values()) == 2
    for minutes_ago in (15, 50):  # when the two loading jobs finished
        hour = (now - timedelta(minutes=minutes_ago)).replace(minute=0, second=0, microsecond=0)
        assert loads[hour] >= 1

    days = {d.day: d for d in ctx["credits_per_day"]}
    today = days[timezone.localdate(now)]
    assert (today.spent, today.refunded, today.bought, today.granted) == (
        Decimal("2.00"),
        Decimal("0.50"),
        Decimal("20.00"),
        Decimal("15.00"),
    )
    assert days[timezone.localdate(now - timedelta(days=2))].bought == Decimal("7.00")
    assert len(days) == 14

    html = response.content.decode()
    assert f'<tr data-tier="{pro.name}"><td>{pro.name}</td><td class="queue-depth">1</td>' in html
    assert '<tr data-worker="gpu-1"><td><code>gpu-1</code></td>' in html
    assert '<td class="hour">42% ' in html  # 25 of 60 minutes
    row = f'<tr data-day="{timezone.localdate(now):%Y-%m-%d}">'
    assert row in html and '<td class="spent">2.00</td>' in html
    assert 'id="loads-chart"' in html and 'id="credits-chart"' in html


def test_the_credits_chart_plots_every_series_of_its_table_with_axis_units_and_legend(
    client, carol, alice
):
    ledger.credit(alice, 40, CreditEntry.Kind.GRANT, key="chart-grant")
    ledger.credit(alice, 10, CreditEntry.Kind.TOP_UP, reason="pack")
    client.force_login(carol)
    response = client.get(reverse("ops"))
    html = response.content.decode()
    granted_today = response.context["credits_per_day"][-1].granted  # the welcome grant too
    assert granted_today >= 40
    start = html.index('id="credits-chart"')
    chart = html[start : html.index("</figure>", start)]
    legend = chart[chart.index('class="chart-legend"') :]
    for series in ("Spent", "Refunded", "Bought", "Granted"):
        assert series in legend
    # Granted credits are drawn, not only listed in the table.
    assert f"Granted: {float(granted_today):g} credits</title>" in chart
    assert '<text class="chart-unit"' in chart and ">credits</text>" in chart
    ticks = re.findall(r'class="chart-tick" x="46" [^>]*>([\d,.]+)</text>', chart)
    assert ticks[0] == "0" and float(ticks[-1].replace(",", "")) >= 40


def test_every_chart_has_a_y_axis(client, carol):
    client.force_login(carol)
    html = client.get(reverse("ops")).content.decode()
    assert html.count('class="chart-axis"') == 3


def test_staff_find_operations_in_the_header_and_members_do_not(client, carol, alice):
    client.force_login(carol)
    assert f'href="{reverse("ops")}"' in client.get(reverse("home")).content.decode()
    client.force_login(alice)
    assert f'href="{reverse("ops")}"' not in client.get(reverse("home")).content.decode()
