"""Prometheus metrics of the platform, read at scrape time from the database and Redis.

Built with the official client library (`prometheus_client`): one custom collector, so every
web process answers the same figures (nothing is counted in process memory). Names:

- `atelier_queue_depth{model,tier}`: jobs queued (waiting or handed out, not started): the
  backlog an autoscaler scales GPU workers on (platform/k8s/).
- `atelier_jobs_running`, `atelier_workers_present`, `atelier_worker_loaded_model{worker,model}`.
- `atelier_job_wait_seconds{quantile}` and `atelier_job_run_seconds{quantile}` over the last hour.
- `atelier_jobs_finished_total{outcome}`: succeeded, failed, cancelled (every job ever).
- `atelier_worker_busy_ratio{worker}`: share of the last hour each worker ran jobs.
- `atelier_model_loads_last_hour`: jobs that had to load their model.
- `atelier_ledger_amount_total{kind}`: credits moved per ledger entry kind (grant, capture...).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from django.db.models import Count, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from accounts.models import CreditEntry, MembershipTier
from generation.broker import get_redis
from generation.fleet import present_heartbeats
from generation.models import Job
from operations.metrics import model_loads_per_hour, percentile, worker_utilisation

QUEUE_DEPTH = "atelier_queue_depth"  # referenced by platform/k8s/ (a test checks both agree)


class PlatformCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        yield self._queue_depth()
        running = GaugeMetricFamily("atelier_jobs_running", "Jobs running on a GPU worker now")
        running.add_metric([], Job.objects.running().count())
        yield running
        yield from self._durations(now)
        finished = CounterMetricFamily(
            "atelier_jobs_finished", "Jobs that reached a terminal state", labels=["outcome"]
        )
        counts = dict(
            Job.objects.filter(status__in=Job.TERMINAL)
            .values("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
        for outcome in Job.TERMINAL:
            finished.add_metric([str(outcome)], counts.get(outcome, 0))
        yield finished
        busy = GaugeMetricFamily(
            "atelier_worker_busy_ratio",
            "Share of the last hour a worker ran jobs",
            labels=["worker"],
        )
        for worker in worker_utilisation(now):
            busy.add_metric([worker.worker_id], min(1.0, worker.busy_hour_s / 3600))
        yield busy
        yield from self._fleet()
        loads = GaugeMetricFamily(
            "atelier_model_loads_last_hour", "Jobs that loaded their model, last hour"
        )
        loads.add_metric([], sum(n for _, n in model_loads_per_hour(1, now)))
        yield loads
        ledger = CounterMetricFamily(
            "atelier_ledger_amount", "Credits moved, by ledger entry kind", labels=["kind"]
        )
        sums = dict(
            CreditEntry.objects.values_list("kind")
            .annotate(s=Sum("amount"))
            .values_list("kind", "s")
        )
        for kind in CreditEntry.Kind:
            ledger.add_metric([str(kind)], float(sums.get(kind) or 0))
        yield ledger

    def _queue_depth(self) -> Metric:
        depth = GaugeMetricFamily(
            QUEUE_DEPTH, "Jobs queued and not started, by model and tier", labels=["model", "tier"]
        )
        rows = (
            Job.objects.queued()
            .values("checkpoint__name", "owner__credit_account__tier__name")
            .annotate(n=Count("id"))
            .values_list("checkpoint__name", "owner__credit_account__tier__name", "n")
        )
        default = None
        for model, tier, n in rows:
            if tier is None:  # no account yet: the default tier
                default = default or MembershipTier.objects.default().name
                tier = default
            depth.add_metric([model, tier], n)
        return depth

    def _durations(self, now: datetime) -> Iterator[Metric]:
        since = now - timedelta(hours=1)
        rows = Job.objects.filter(finished_at__gte=since, started_at__isnull=False).values_list(
            "created_at", "started_at", "finished_at"
        )
        waits, runs = [], []
        for created, started, finished in rows:
            if started and finished:
                waits.append((started - created).total_seconds())
                runs.append((finished - started).total_seconds())
        for name, values, what in (
            ("atelier_job_wait_seconds", waits, "Submission to start"),
            ("atelier_job_run_seconds", runs, "Start to finish"),
        ):
            family = GaugeMetricFamily(name, f"{what}, jobs of the last hour", labels=["quantile"])
            for q in (0.5, 0.95):
                value = percentile(values, q)
                family.add_metric([str(q)], value if value is not None else float("nan"))
            yield family

    def _fleet(self) -> Iterator[Metric]:
        beats = present_heartbeats(get_redis())
        present = GaugeMetricFamily("atelier_workers_present", "GPU workers with a heartbeat")
        present.add_metric([], len(beats))
        yield present
        loaded = GaugeMetricFamily(
            "atelier_worker_loaded_model", "Models on a worker's device", labels=["worker", "model"]
        )
        for worker_id, beat in sorted(beats.items()):
            for model in beat.get("loaded_models") or ():
                loaded.add_metric([worker_id, model], 1)
        yield loaded


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PlatformCollector())
    return reg
