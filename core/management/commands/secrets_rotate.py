"""Re-encrypt every stored secret under the newest STEWARD_ENCRYPTION_KEY.

Rotating a key without downtime:
1. put the new key first in STEWARD_ENCRYPTION_KEY, keep the old one after it (`new,old`), and
   restart every process: new secrets are written under the new key, both keys decrypt;
2. run `python manage.py secrets_rotate` (safe while the app runs, idempotent): it exits 0 once no
   secret needs an older key;
3. remove the old key and restart.

The apps' services do the work (settings.STEWARD_SECRET_ROTATIONS names them); core knows none of
their models.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.module_loading import import_string

from core.crypto import keyring


class Command(BaseCommand):
    help = "Re-encrypt every stored secret under the newest encryption key (STEWARD_ENCRYPTION_KEY)."

    def handle(self, *args, **options):
        if not settings.STEWARD_ENCRYPTION_KEY:
            self.stdout.write(
                "STEWARD_ENCRYPTION_KEY is not set: secrets are encrypted under a key derived from SECRET_KEY."
            )
        self.stdout.write(f"{keyring().size} decryption key(s) configured (newest first, with legacy derivations).")
        unreadable: list[str] = []
        changed_meanwhile = 0
        for path in settings.STEWARD_SECRET_ROTATIONS:
            report = import_string(path)()
            self.stdout.write(
                f"{report.label}: {report.rotated} re-encrypted, {report.current} already under the newest key, "
                f"{report.changed_meanwhile} changed while rotating, {len(report.unreadable)} unreadable"
            )
            changed_meanwhile += report.changed_meanwhile
            unreadable += [f"{report.label}: {row}" for row in report.unreadable]
        if unreadable:
            for row in unreadable:
                self.stderr.write(f"  unreadable, left as it is: {row}")
            raise CommandError(
                f"{len(unreadable)} secret(s) cannot be decrypted with any configured key: their key was "
                "removed before they were rotated. Add it back and run again, or set those secrets again."
            )
        if changed_meanwhile:
            # Written by the app during the run: under the newest key if that process has the new
            # configuration already. Another run checks rather than assumes.
            self.stdout.write(f"{changed_meanwhile} secret(s) changed while rotating: run again to check them.")
        else:
            self.stdout.write(self.style.SUCCESS("Every stored secret is under the newest key."))
