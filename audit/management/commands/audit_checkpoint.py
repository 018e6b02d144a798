"""Export the signed head of every organisation's audit chain, for storage the database's
administrators cannot write; `audit_verify --checkpoints FILE` checks the chains against it later."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.models import Organisation
from audit.services import audit_checkpoints_take


class Command(BaseCommand):
    help = (
        "Write one signed checkpoint (last event id, hash, count, time) per organisation as JSON lines, "
        "to standard output or to a new file in --out DIR."
    )

    def add_arguments(self, parser):
        parser.add_argument("--out", default="-", metavar="DIR|-", help="Directory for a new file, or '-' (default).")
        parser.add_argument("--organisation", metavar="SLUG", help="Only this organisation's chain.")

    def handle(self, *args, out: str = "-", organisation: str | None = None, **options):
        ids = None
        if organisation:
            org = Organisation.objects.filter(slug=organisation).first()
            if org is None:
                raise CommandError(f"No organisation with slug {organisation!r}")
            ids = [org.id]
        run = audit_checkpoints_take(organisation_ids=ids)
        text = "".join(checkpoint.as_line() + "\n" for checkpoint in run.checkpoints)
        if out == "-":
            self.stdout.write(text, ending="")
        else:
            directory = Path(out)
            if not directory.is_dir():
                raise CommandError(f"--out {out}: not a directory")
            path = directory / f"audit-checkpoints-{timezone.now():%Y%m%dT%H%M%S%fZ}.jsonl"
            # A new file each run (never one rewritten in place), readable by its owner only.
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
            self.stderr.write(f"{len(run.checkpoints)} checkpoint(s) written to {path}")
        if run.broken:
            slugs = dict(Organisation.objects.values_list("id", "slug"))
            for chain_break in run.broken:
                self.stderr.write(
                    f"BROKEN organisation={slugs.get(chain_break.organisation_id, chain_break.organisation_id)} "
                    f"seq={chain_break.seq} id={chain_break.event_id}: {chain_break.problem} (no checkpoint taken)"
                )
            raise CommandError(f"{len(run.broken)} chain(s) broken: no checkpoint taken for them")
