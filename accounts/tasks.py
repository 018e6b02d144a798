from __future__ import annotations

from celery import shared_task


@shared_task(name="accounts.invitation_mail_send", soft_time_limit=60, time_limit=90)
def invitation_mail_send(invitation_id: int, sealed_token: str) -> None:
    """Mail an invitation's link (see accounts.invitations.invitation_mail_send). Not retried: a lost mail
    is not worth a duplicate one, and the inviting admin has the link to pass on."""
    from accounts.invitations import invitation_mail_send as send

    send(invitation_id=invitation_id, sealed_token=sealed_token)
