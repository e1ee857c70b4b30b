"""The marks of every test module that runs jobs on a real GPU worker process (demo models)."""

from __future__ import annotations

import pytest

REAL_WORKER_MARKS = [
    pytest.mark.engine,
    pytest.mark.django_db(transaction=True),
    # a real GPU worker on the demo models and a platform worker, for every test of the module
    pytest.mark.usefixtures(
        "demo_catalogue", "platform_tick", "gpu_worker_process", "thread_connections_closed"
    ),
    # diffusers 0.42's schedulers trip numpy 2's copy-keyword deprecation on every construction
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]
