"""The first admin account: the embedded run says how to make one until one exists."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from accounts.models import User
from operations.management.commands.runplatform import Command

pytestmark = pytest.mark.django_db
README = Path(__file__).resolve().parents[2] / "README.md"


def announcement() -> str:
    out = io.StringIO()
    Command(stdout=out)._announce("127.0.0.1", 8000)
    return out.getvalue()


def test_the_embedded_run_says_how_to_make_the_first_superuser(carol):
    text = announcement()  # carol is staff, not a superuser
    assert "No admin account yet. Make one with: .venv/bin/python manage.py createsuperuser" in text
    assert "http://127.0.0.1:8000/admin/" in text


def test_once_a_superuser_exists_the_hint_is_gone():
    User.objects.create_superuser("root", "root@example.com", "a-long-password-1")
    text = announcement()
    assert "Atelier is starting at http://127.0.0.1:8000/" in text
    assert "createsuperuser" not in text


def test_the_readme_documents_createsuperuser():
    assert "python manage.py createsuperuser" in README.read_text()
