import time
from pathlib import Path

import pytest

from core.redis import redis_client


@pytest.mark.django_db(transaction=True)
def test_task_runs_on_a_real_worker(celery_worker_process):
    from core.tasks import heartbeat

    redis_client().delete("steward:heartbeat")
    heartbeat.delay()
    deadline = time.monotonic() + 20
    while redis_client().get("steward:heartbeat") is None:
        assert time.monotonic() < deadline, Path(celery_worker_process.log_path).read_text()[-2000:]
        time.sleep(0.1)
