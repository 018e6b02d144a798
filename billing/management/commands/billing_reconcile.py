"""Recompute the daily rollups from the ledger and report every difference.

Exit status 0 when rollups match the ledger, 1 when they differ (after --fix, the differences
found are printed and repaired; the exit status is still 1 so a cron job notices).
"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand

from billing.selectors import rollups_compare
from billing.services import rollup_day_rebuild


class Command(BaseCommand):
    help = "Compare daily usage rollups with the ledger; non-zero exit on any difference."

    def add_arguments(self, parser):
        parser.add_argument("--organisation", type=int, action="append", help="Only this organisation id (repeatable).")
        parser.add_argument("--fix", action="store_true", help="Rebuild the days that differ from the ledger.")

    def handle(self, *args, organisation=None, fix=False, **options):
        differences = rollups_compare(organisation_ids=organisation)
        for diff in differences:
            self.stdout.write(
                f"organisation={diff.organisation_id} day={diff.day} dims={diff.dims} "
                f"ledger={diff.expected} rollup={diff.found}"
            )
        if not differences:
            self.stdout.write(self.style.SUCCESS("Rollups match the ledger."))
            return
        self.stdout.write(self.style.ERROR(f"{len(differences)} rollup row(s) differ from the ledger."))
        if fix:
            for org_id, day in sorted({(d.organisation_id, d.day) for d in differences}):
                rollup_day_rebuild(organisation_id=org_id, day=day)
            self.stdout.write("Rebuilt the differing days from the ledger.")
        sys.exit(1)
