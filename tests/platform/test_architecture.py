"""Boundaries the design depends on: a light web tier and a Django-free GPU worker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DJANGO_SIDE = (
    "accounts",
    "generation",
    "gallery",
    "config",
    "operations",
    "django",
    "rest_framework",
)


def test_the_web_process_never_imports_torch_or_diffusers():
    code = (
        "import sys, django, os;"
        "os.environ['DJANGO_SETTINGS_MODULE']='config.settings';"
        "from config.asgi import application;"
        "from django.urls import get_resolver; get_resolver().url_patterns;"
        "import django.apps;"
        "import generation.models, generation.submission, generation.api, gallery.views;"
        "heavy = sorted(m for m in ('torch','diffusers','transformers') if m in sys.modules);"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"web process imported {result.stdout.strip()}"


def test_gpu_worker_imports_nothing_from_the_django_side():
    offenders = []
    for path in (ROOT / "gpu_worker").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in DJANGO_SIDE:
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []
