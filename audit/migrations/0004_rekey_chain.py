"""Re-key every audit chain from plain SHA-256 to HMAC-SHA256 under STEWARD_AUDIT_KEY.

Why re-key rather than continue each chain under HMAC from its last SHA-256 link: a verifier that
accepts plain links anywhere can be handed a chain made entirely of plain links, which anyone with
database access can recompute. After this migration every link is keyed and `audit_verify` accepts
nothing else. Each chain is checked under the old scheme as it is re-keyed; from its first break on
(if any), rows are left untouched, so the break still shows under the new scheme instead of being
laundered into a valid-looking chain.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import json

from django.conf import settings
from django.db import migrations

GENESIS_HASH = "0" * 64


def _canonical(event) -> bytes:
    # audit.services.event_canonical as of this migration (copied: a migration must not change with the app).
    return json.dumps(
        {
            "organisation_id": event.organisation_id,
            "seq": event.seq,
            "created_at": event.created_at.isoformat(),
            "actor_type": event.actor_type,
            "actor_id": event.actor_id,
            "actor_label": event.actor_label,
            "action": event.action,
            "target_type": event.target_type,
            "target_id": event.target_id,
            "before": event.before,
            "after": event.after,
            "request_id": event.request_id,
            "prev_hash": event.prev_hash,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    ).encode()


def _sha256(event) -> str:
    return hashlib.sha256(_canonical(event)).hexdigest()


def _hmac(event) -> str:
    key = hmac.new(settings.STEWARD_AUDIT_KEY.encode(), b"steward audit chain v2", hashlib.sha256).digest()
    return hmac.new(key, _canonical(event), hashlib.sha256).hexdigest()


def _append_only(schema_editor, *, on: bool) -> None:
    triggers = importlib.import_module("audit.migrations.0002_append_only_triggers")
    if schema_editor.connection.vendor == "postgresql":
        # Deferred foreign-key checks queued in this transaction would block ALTER TABLE.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        schema_editor.execute(f"ALTER TABLE audit_auditevent {'ENABLE' if on else 'DISABLE'} TRIGGER USER")
    else:
        for statement in triggers.SQLITE_FORWARD if on else triggers.SQLITE_BACKWARD:
            schema_editor.execute(statement)


def _relink(apps, schema_editor, *, old, new) -> None:
    AuditEvent = apps.get_model("audit", "AuditEvent")
    AuditChainHead = apps.get_model("audit", "AuditChainHead")
    if not AuditEvent.objects.exists():
        return
    _append_only(schema_editor, on=False)
    organisation_ids = sorted(set(AuditEvent.objects.order_by().values_list("organisation_id", flat=True).distinct()))
    for organisation_id in organisation_ids:
        # Writers lock the head; holding it keeps them out until this chain is re-linked.
        head = AuditChainHead.objects.select_for_update().filter(organisation_id=organisation_id).first()
        prev_old = prev_new = GENESIS_HASH
        expected_seq, batch = 1, []
        for event in AuditEvent.objects.filter(organisation_id=organisation_id).order_by("seq").iterator(2000):
            if event.seq != expected_seq or event.prev_hash != prev_old or old(event) != event.hash:
                break
            old_hash = event.hash
            event.prev_hash = prev_new
            event.hash = new(event)
            batch.append(event)
            prev_old, prev_new, expected_seq = old_hash, event.hash, expected_seq + 1
            if len(batch) >= 1000:
                AuditEvent.objects.bulk_update(batch, ["prev_hash", "hash"])
                batch = []
        AuditEvent.objects.bulk_update(batch, ["prev_hash", "hash"])
        if head is not None and head.last_seq == expected_seq - 1 and head.last_hash == prev_old:
            head.last_hash = prev_new
            head.save(update_fields=["last_hash"])
    _append_only(schema_editor, on=True)


def rekey(apps, schema_editor):
    _relink(apps, schema_editor, old=_sha256, new=_hmac)


def unkey(apps, schema_editor):
    _relink(apps, schema_editor, old=_hmac, new=_sha256)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_verification")]
    operations = [migrations.RunPython(rekey, unkey)]
