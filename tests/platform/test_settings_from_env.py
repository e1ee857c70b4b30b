"""Settings come from the environment; production mode passes Django's deployment checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.env import ImproperEnvironment, env_bool, env_int, env_list, env_str

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "ATELIER_MODE": "production",
    "SECRET_KEY": "x" * 20 + "-a-production-secret-that-is-long-and-random-enough-1234567890",
    "ALLOWED_HOSTS": "atelier.example.com",
    "DATABASE_URL": "sqlite:////tmp/atelier-deploy-check.sqlite3",
}


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    clean.update(env)
    clean["DJANGO_SETTINGS_MODULE"] = "config.settings"
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True
    )


def test_production_mode_passes_check_deploy_with_no_warnings():
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_mode_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PRODUCTION_ENV.items() if k != "SECRET_KEY"}
    env["SECRET_KEY"] = ""
    result = run_manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_secret_key_can_come_from_a_file(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(PRODUCTION_ENV["SECRET_KEY"] + "\n")
    env = dict(PRODUCTION_ENV, SECRET_KEY="", SECRET_KEY_FILE=str(secret_file))
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stderr


def test_database_url_and_media_root_are_read(tmp_path):
    env = {
        "DATABASE_URL": "postgres://u:p@db.internal:6543/atelier",
        "MEDIA_ROOT": str(tmp_path / "media"),
        "MODELS_DIR": str(tmp_path / "models"),
        "REDIS_URL": "redis://cache.internal:6380/2",
    }
    code = (
        "from django.conf import settings as s;"
        "d=s.DATABASES['default'];"
        "print(d['HOST'], d['PORT'], d['NAME'], s.MEDIA_ROOT, s.MODELS_DIR, s.REDIS_URL)"
    )
    result = run_manage("shell", "--no-imports", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "db.internal",
        "6543",
        "atelier",
        str(tmp_path / "media"),
        str(tmp_path / "models"),
        "redis://cache.internal:6380/2",
    ]


def test_an_sqlite_database_writes_ahead_and_keeps_full_sync(tmp_path):
    """Readers do not wait for a writer and a returned commit survives a power cut: WAL mode
    (kept by the file) with SQLite's default synchronous=FULL."""
    database = tmp_path / "atelier.sqlite3"
    code = (
        "from django.db import connection as c;"
        "cur=c.cursor();"
        "print(cur.execute('PRAGMA journal_mode').fetchone()[0],"
        "cur.execute('PRAGMA synchronous').fetchone()[0])"
    )
    result = run_manage(
        "shell", "--no-imports", "-c", code, env={"DATABASE_URL": f"sqlite:///{database}"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wal", "2"]


@pytest.mark.parametrize(("raw", "expected"), [("", "5"), ("0", "None"), ("20", "20")])
def test_postgresql_prepares_statements_from_the_threshold_or_never(raw, expected):
    code = (
        "from django.conf import settings as s;"
        "print(s.DATABASES['default']['OPTIONS']['prepare_threshold'])"
    )
    env = {
        "DATABASE_URL": "postgres://u:p@db.internal:6543/atelier",
        "DATABASE_PREPARE_THRESHOLD": raw,
    }
    result = run_manage("shell", "--no-imports", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected]


def test_a_typo_in_debug_stops_the_process():
    result = run_manage("check", env={"DEBUG": "yes"})
    assert result.returncode != 0
    assert "DEBUG must be 'true' or 'false'" in result.stderr


def test_development_secret_is_generated_once_and_kept_out_of_git(tmp_path):
    env = {"ATELIER_VAR_DIR": str(tmp_path), "SECRET_KEY": ""}
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    first = run_manage("shell", "--no-imports", "-c", code, env=env).stdout.strip()
    second = run_manage("shell", "--no-imports", "-c", code, env=env).stdout.strip()
    assert first and first == second
    assert (tmp_path / "secret_key").read_text() == first
    ignored = subprocess.run(["git", "check-ignore", "-q", "var/secret_key"], cwd=ROOT)
    assert ignored.returncode == 0


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("false", False), ("TRUE", True), ("", False)]
)
def test_env_bool_accepts_only_true_or_false(monkeypatch, raw, expected):
    monkeypatch.setenv("FLAG", raw)
    assert env_bool("FLAG", default=False) is expected


@pytest.mark.parametrize("raw", ["1", "yes", "on", "truthy"])
def test_env_bool_rejects_anything_else(monkeypatch, raw):
    monkeypatch.setenv("FLAG", raw)
    with pytest.raises(ImproperEnvironment, match="FLAG"):
        env_bool("FLAG", default=False)


def test_env_int_and_list(monkeypatch):
    monkeypatch.setenv("N", "12")
    monkeypatch.setenv("HOSTS", "a.example, b.example,")
    assert env_int("N", 3) == 12
    assert env_list("HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.setenv("N", "twelve")
    with pytest.raises(ImproperEnvironment, match="N must be an integer"):
        env_int("N", 3)


def test_env_str_prefers_the_file_variant(monkeypatch, tmp_path):
    (tmp_path / "pw").write_text("from-file\n")
    monkeypatch.setenv("DB_PASSWORD", "from-env")
    monkeypatch.setenv("DB_PASSWORD_FILE", str(tmp_path / "pw"))
    assert env_str("DB_PASSWORD") == "from-file"


# --- request edges: trusted proxies and the body limit ----------------------------------------


def test_production_behind_a_proxy_with_a_body_limit_passes_check_deploy():
    env = dict(PRODUCTION_ENV, TRUSTED_PROXIES="10.0.0.2, 172.16.0.0/12", MAX_REQUEST_BODY_MB="40")
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("TRUSTED_PROXIES", "proxy.internal"), ("MAX_REQUEST_BODY_MB", "0")],
)
def test_a_malformed_edge_setting_stops_start_up_naming_it(name, value):
    result = run_manage("check", env=dict(PRODUCTION_ENV, **{name: value}))
    assert result.returncode != 0
    assert name in result.stderr
