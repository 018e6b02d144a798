"""Walk the audit hash chains and exit non-zero naming the first broken event."""

from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Organisation
from audit.services import CheckpointInvalid, audit_chain_verify, checkpoint_parse


class Command(BaseCommand):
    help = (
        "Verify every organisation's audit chain (or one, with --organisation SLUG), and with --checkpoints "
        "FILE that each exported checkpoint still lies on its chain."
    )

    def add_arguments(self, parser):
        parser.add_argument("--organisation", metavar="SLUG", help="Only this organisation's chain.")
        parser.add_argument(
            "--checkpoints",
            metavar="FILE",
            help="JSON lines written by `audit_checkpoint` ('-' reads standard input); every line must verify.",
        )

    def handle(self, *args, organisation: str | None = None, checkpoints: str | None = None, **options):
        ids = None
        slugs = dict(Organisation.objects.values_list("id", "slug"))
        if organisation:
            org = Organisation.objects.filter(slug=organisation).first()
            if org is None:
                raise CommandError(f"No organisation with slug {organisation!r}")
            ids = [org.id]
        loaded = self._checkpoints_load(checkpoints) if checkpoints else None
        if loaded is not None and ids is not None:
            loaded = [checkpoint for checkpoint in loaded if checkpoint.organisation_id in ids]
        result = audit_chain_verify(organisation_ids=ids, checkpoints=loaded)
        if not result.ok:
            for chain_break in result.broken:
                slug = slugs.get(chain_break.organisation_id, f"#{chain_break.organisation_id}")
                self.stderr.write(
                    f"BROKEN organisation={slug} seq={chain_break.seq} id={chain_break.event_id}: {chain_break.problem}"
                )
            first = result.first_broken
            raise CommandError(
                f"audit chain broken: organisation {slugs.get(first.organisation_id, first.organisation_id)}, "
                f"event seq {first.seq} (id {first.event_id}): {first.problem}"
            )
        summary = f"{result.events_checked} events verified in {result.organisations_checked} chain(s)"
        if loaded is not None:
            summary += f", {len(loaded)} checkpoint(s) matched"
        self.stdout.write(summary)

    def _checkpoints_load(self, path: str) -> list:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot read checkpoints from {path}: {exc}") from None
        loaded = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                loaded.append(checkpoint_parse(line))
            except CheckpointInvalid as exc:
                raise CommandError(f"checkpoint line {number} of {path}: {exc}") from None
        if not loaded:
            raise CommandError(f"No checkpoints in {path}")
        return loaded
