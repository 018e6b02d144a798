from pathlib import Path

import pytest

from core.redis import redis_client
from tests.helpers import wait_until


@pytest.mark.django_db(transaction=True)
def test_task_runs_on_a_real_worker(celery_worker_process):
    from core.tasks import heartbeat

    redis_client().delete("steward:heartbeat")
    heartbeat.delay()
    wait_until(
        lambda: redis_client().get("steward:heartbeat") is not None,
        timeout=20,
        context=lambda: Path(celery_worker_process.log_path).read_text()[-2000:],
    )
