from __future__ import annotations

from celery import shared_task


@shared_task(
    name="audit.chain_verify",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=1800,
    time_limit=1900,
)
def chain_verify(verification_id: int) -> None:
    """Walk one organisation's audit chain and store the outcome on the AuditVerification row.

    Idempotent: the row is claimed pending -> running, so a redelivered message does nothing.
    """
    from audit.services import audit_verification_run

    audit_verification_run(verification_id=verification_id)


@shared_task(name="audit.verifications_recover", soft_time_limit=60, time_limit=90)
def verifications_recover() -> None:
    """Periodic: re-enqueue verifications whose task was lost (see audit_verifications_recover)."""
    from audit.services import audit_verifications_recover

    audit_verifications_recover()
