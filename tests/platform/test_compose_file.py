"""docker-compose.yml describes the production shape (Docker itself does not run here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_every_process_of_the_platform(compose):
    assert set(compose["services"]) == {"postgres", "redis", "web", "platform", "gpu"}
    assert {"pgdata", "media", "model-store", "models"} <= set(compose["volumes"])


def test_uploaded_models_live_on_a_volume_and_workers_fetch_them_from_web(compose):
    for name in ("web", "platform"):
        service = compose["services"][name]
        store = service["environment"]["MODEL_STORE_DIR"]
        assert any(v.endswith(f":{store}") for v in service["volumes"]), name
        assert service["environment"]["MODEL_DELIVERY_BASE_URL"] == "http://web:8000"


def test_every_service_has_a_health_check(compose):
    for name, service in compose["services"].items():
        assert "healthcheck" in service, name


def test_web_and_platform_wait_for_healthy_database_and_redis(compose):
    for name in ("web", "platform"):
        depends = compose["services"][name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        env = compose["services"][name]["environment"]
        assert env["ATELIER_MODE"] == "production"


def test_gpu_worker_gets_a_gpu_and_models_but_no_database(compose):
    gpu = compose["services"]["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert any(v.endswith(":/models") for v in gpu["volumes"])
    assert "DATABASE_URL" not in gpu.get("environment", {})
    assert "postgres" not in gpu["depends_on"]


def test_dockerfiles_named_in_compose_exist(compose):
    for service in compose["services"].values():
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file()


def compose_plugin_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not compose_plugin_available(), reason="docker compose plugin not installed")
def test_docker_compose_accepts_the_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_PASSWORD=x\nSECRET_KEY=y\n")
    result = subprocess.run(
        [
            "docker",
            "compose",
            "-f",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(env_file),
            "config",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
