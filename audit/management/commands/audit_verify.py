"""Walk the audit hash chains and exit non-zero naming the first broken event."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Organisation
from audit.services import audit_chain_verify


class Command(BaseCommand):
    help = "Verify every organisation's audit chain (or one, with --organisation SLUG)."

    def add_arguments(self, parser):
        parser.add_argument("--organisation", metavar="SLUG", help="Only this organisation's chain.")

    def handle(self, *args, organisation: str | None = None, **options):
        ids = None
        slugs = dict(Organisation.objects.values_list("id", "slug"))
        if organisation:
            org = Organisation.objects.filter(slug=organisation).first()
            if org is None:
                raise CommandError(f"No organisation with slug {organisation!r}")
            ids = [org.id]
        result = audit_chain_verify(organisation_ids=ids)
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
        self.stdout.write(f"{result.events_checked} events verified in {result.organisations_checked} chain(s)")
