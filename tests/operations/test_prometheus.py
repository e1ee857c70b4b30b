"""/metrics: Prometheus figures of the platform for staff or a scraper holding the token, a 404
for anyone else; and the autoscaling manifests in platform/k8s/ ask for metrics it serves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from accounts import ledger
from generation.models import CatalogEntry, Job
from tests.operations.test_ops_pages import make_job

pytestmark = pytest.mark.django_db
K8S = Path(__file__).resolve().parents[2] / "platform" / "k8s"
TOKEN = "scrape-" + "x" * 32


@pytest.fixture
def world(alice, bob, redis_client):
    checkpoint = CatalogEntry.objects.create(name="model-a", kind="checkpoint")
    ledger.credit(alice, 50, "grant", reason="tests")
    make_job(alice, checkpoint, Job.Status.QUEUED, 30)
    make_job(bob, checkpoint, Job.Status.QUEUED, 20)
    make_job(alice, checkpoint, Job.Status.SUCCEEDED, 600, wait_s=2, run_s=8)
    make_job(bob, checkpoint, Job.Status.FAILED, 500, wait_s=4, run_s=1)
    return checkpoint


def scrape(client: Client, **headers: str) -> tuple[int, dict[str, list]]:
    response = client.get("/metrics", headers=headers)
    if response.status_code != 200:
        return response.status_code, {}
    families = text_string_to_metric_families(response.content.decode())
    return 200, {f.name: f.samples for f in families}


def test_anonymous_members_and_wrong_tokens_get_a_404(client, alice, world):
    with override_settings(METRICS_TOKEN=TOKEN):
        assert scrape(client)[0] == 404
        assert scrape(client, Authorization="Bearer " + "y" * len(TOKEN))[0] == 404
        client.force_login(alice)
        assert scrape(client)[0] == 404
    client.logout()
    with override_settings(METRICS_TOKEN=""):  # no token set: a bearer never opens it
        assert scrape(client, Authorization="Bearer ")[0] == 404


def test_staff_and_the_scrape_token_read_the_metrics(client, carol, world):
    with override_settings(METRICS_TOKEN=TOKEN):
        assert scrape(client, Authorization=f"Bearer {TOKEN}")[0] == 200
    client.force_login(carol)
    assert scrape(client)[0] == 200


def test_the_metrics_say_the_backlog_outcomes_times_and_ledger(client, carol, world):
    client.force_login(carol)
    _, metrics = scrape(client)
    depth = metrics["atelier_queue_depth"]
    assert {s.labels["model"] for s in depth} == {"model-a"} and sum(s.value for s in depth) == 2
    assert all(s.labels["tier"] for s in depth)
    outcomes = {s.labels["outcome"]: s.value for s in metrics["atelier_jobs_finished"]}
    assert outcomes == {"succeeded": 1, "failed": 1, "cancelled": 0}
    runs = {s.labels["quantile"]: s.value for s in metrics["atelier_job_run_seconds"]}
    assert runs["0.95"] == pytest.approx(8, abs=0.5)
    grants = {s.labels["kind"]: s.value for s in metrics["atelier_ledger_amount"]}
    assert grants["grant"] >= 50
    assert [s.value for s in metrics["atelier_jobs_running"]] == [0]
    assert "atelier_worker_busy_ratio" in metrics and "atelier_workers_present" in metrics


def manifests() -> list[dict]:
    return [
        doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
    ]


def test_the_autoscalers_scale_gpu_workers_on_metrics_that_exist(client, carol, world):
    client.force_login(carol)
    _, metrics = scrape(client)
    served = set(metrics)
    docs = {doc["kind"]: doc for doc in manifests()}
    keda, hpa, deployment = (
        docs["ScaledObject"],
        docs["HorizontalPodAutoscaler"],
        docs["Deployment"],
    )
    target = deployment["metadata"]["name"]
    assert keda["spec"]["scaleTargetRef"]["name"] == target == hpa["spec"]["scaleTargetRef"]["name"]
    assert keda["spec"]["minReplicaCount"] == 0 < keda["spec"]["maxReplicaCount"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [trigger] = keda["spec"]["triggers"]
    named = set(re.findall(r"atelier_\w+", trigger["metadata"]["query"]))
    assert named and named <= served
    [metric] = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] in served
