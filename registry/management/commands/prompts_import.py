"""Import a prompts YAML file (from prompts_export) into an organisation, idempotently and all-or-nothing."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Organisation
from core.actors import Actor
from core.errors import ApplicationError
from registry.yaml_io import prompts_import


class Command(BaseCommand):
    help = "Import prompts from YAML. The same file twice changes nothing; a conflicting file changes nothing."

    def add_arguments(self, parser):
        parser.add_argument("--organisation", required=True, help="Organisation slug")
        parser.add_argument("path", nargs="?", default="-", help="File to read, or - for stdin (default)")

    def handle(self, *args, organisation: str, path: str, **options):
        org = Organisation.objects.filter(slug=organisation).first()
        if org is None:
            raise CommandError(f"No organisation with slug {organisation!r}.")
        if path == "-":
            text = sys.stdin.buffer.read()
        else:
            try:
                with open(path, "rb") as f:
                    text = f.read()
            except OSError as exc:
                raise CommandError(f"Cannot read {path}: {exc}") from exc
        try:
            result = prompts_import(organisation=org, text=text, actor=Actor.system("prompts_import"))
        except ApplicationError as exc:
            raise CommandError(f"Nothing imported: {exc.message}") from exc
        if not result.changed:
            self.stdout.write("Nothing to change.")
        for line in (
            [f"created prompt {x}" for x in result.prompts_created]
            + [f"added {x}" for x in result.versions_created]
            + [f"label {x}" for x in result.labels_changed]
            + [f"updated {x}" for x in result.prompts_updated]
            + [f"promotion requested for protected label {x}" for x in result.promotions_requested]
        ):
            self.stdout.write(line)
