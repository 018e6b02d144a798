from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEvent, AuditVerification
from audit.services import audit_verification_run, audit_verifications_recover
from tests.helpers import append_only_lifted, login, queued_tasks, record, wait_until


@pytest.mark.django_db
def test_run_claims_once_and_records_ok(organisation):
    record(organisation, 3)
    verification = AuditVerification.objects.create(organisation=organisation)
    done = audit_verification_run(verification_id=verification.id)
    assert done.status == "ok" and done.events_checked == 4
    assert done.started_at <= done.finished_at
    assert audit_verification_run(verification_id=verification.id) is None


@pytest.mark.django_db
def test_run_records_the_first_broken_event(organisation, other_organisation):
    record(organisation, 3)
    target = AuditEvent.objects.get(organisation=organisation, seq=2)
    with append_only_lifted():
        AuditEvent.objects.filter(pk=target.pk).update(target_id="forged")
    verification = AuditVerification.objects.create(organisation=organisation)
    done = audit_verification_run(verification_id=verification.id)
    assert done.status == "broken"
    assert done.first_broken == {
        "organisation_id": organisation.id,
        "seq": 2,
        "event_id": target.id,
        "problem": "hash does not match the event's content (row altered?)",
    }
    # Another organisation's chain is not affected.
    other = AuditVerification.objects.create(organisation=other_organisation)
    assert audit_verification_run(verification_id=other.id).status == "ok"


@pytest.mark.django_db
def test_recover_requeues_lost_work(organisation, django_capture_on_commit_callbacks):
    old = timezone.now() - timedelta(hours=1)
    stuck = AuditVerification.objects.create(organisation=organisation, status="running", started_at=old)
    lost = AuditVerification.objects.create(organisation=organisation)
    AuditVerification.objects.filter(pk__in=[stuck.pk, lost.pk]).update(created_at=old)
    fresh = AuditVerification.objects.create(organisation=organisation)
    with django_capture_on_commit_callbacks(execute=True):
        assert audit_verifications_recover() == 2
    stuck.refresh_from_db()
    assert stuck.status == "pending"
    assert sorted(queued_tasks()) == sorted([("audit.chain_verify", [stuck.id]), ("audit.chain_verify", [lost.id])])
    assert fresh.id not in [args[0] for _, args in queued_tasks()]


@pytest.mark.django_db(transaction=True)
def test_verify_button_completes_on_a_real_worker_with_the_requests_id(client, admin, celery_worker_process):
    """A web request enqueues the task; a separate worker process runs it; the worker's log line
    carries the request id of the web request."""
    login(client, admin)
    request_id = "verify-" + str(int(time.time() * 1000))
    response = client.post(reverse("audit:verification_create"), HTTP_X_REQUEST_ID=request_id)
    assert response.status_code == 302 and response["x-request-id"] == request_id
    verification = AuditVerification.objects.get(organisation=admin.organisation)

    def verified() -> bool:
        verification.refresh_from_db()
        return verification.status == "ok"

    wait_until(
        verified, timeout=30, interval=0.1, context=lambda: Path(celery_worker_process.log_path).read_text()[-3000:]
    )
    assert verification.events_checked == AuditEvent.objects.filter(organisation=admin.organisation).count()
    log_text = Path(celery_worker_process.log_path).read_text()
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    finished = [line for line in lines if line.get("message") == "audit chain verification finished"]
    assert finished, log_text[-3000:]
    assert finished[0]["request_id"] == request_id
    assert finished[0]["verification_id"] == verification.id
