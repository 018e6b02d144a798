from __future__ import annotations

from django.core.management.base import BaseCommand

from billing.services import prices_seed


class Command(BaseCommand):
    help = "Add models from litellm's bundled cost map (and the development models) to the global price table."

    def handle(self, *args, **options):
        added = prices_seed()
        self.stdout.write(f"{added} price row(s) added.")
