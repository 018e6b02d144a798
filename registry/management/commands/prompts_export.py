"""Write an organisation's prompts (all versions and labels) as YAML, to a file or stdout."""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Organisation
from registry.models import Prompt
from registry.yaml_io import prompts_export


class Command(BaseCommand):
    help = "Export prompts with all their versions and labels as YAML (the format prompts_import reads)."

    def add_arguments(self, parser):
        parser.add_argument("--organisation", required=True, help="Organisation slug")
        parser.add_argument("--prompt", action="append", default=[], help="Only this prompt (repeatable)")
        parser.add_argument("path", nargs="?", default="-", help="File to write, or - for stdout (default)")

    def handle(self, *args, organisation: str, prompt: list[str], path: str, **options):
        org = Organisation.objects.filter(slug=organisation).first()
        if org is None:
            raise CommandError(f"No organisation with slug {organisation!r}.")
        prompts = Prompt.objects.filter(organisation=org).order_by("name")
        if prompt:
            prompts = prompts.filter(name__in=prompt)
            missing = sorted(set(prompt) - set(prompts.values_list("name", flat=True)))
            if missing:
                raise CommandError(f"No such prompts: {', '.join(missing)}.")
        text = prompts_export(prompts=prompts)
        if path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            self.stderr.write(f"Wrote {prompts.count()} prompt(s) to {path}.")
