"""python manage.py eval_run --prompt P --candidate V --baseline production --suite S --wait [--junit-xml PATH]

Starts a regression run of a prompt version against a label's version (or a version) with a suite; with
--wait, follows it to the end, prints the verdict table and exits 1 on a regression (any metric regressed,
or a critical item newly failing), 2 when the run failed, was cancelled or did not finish in --timeout;
0 otherwise. --inline executes the cells in this process instead of waiting for a Celery worker.
"""

from __future__ import annotations

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from core.actors import Actor
from core.errors import ApplicationError

EXIT_REGRESSED = 1
EXIT_FAILED = 2


class Command(BaseCommand):
    help = "Run an evaluation suite on a prompt version against a baseline; exit non-zero on a regression."

    def add_arguments(self, parser):
        parser.add_argument("--prompt", required=True, help="The prompt's name")
        parser.add_argument("--candidate", required=True, type=int, help="The candidate version number")
        parser.add_argument("--baseline", default="production", help="The baseline label (default production)")
        parser.add_argument("--baseline-version", type=int, help="A baseline version number instead of a label")
        parser.add_argument("--suite", required=True, help="The suite's name")
        parser.add_argument("--model", default="", help="Run the candidate on this model (a route name)")
        parser.add_argument("--repeats", type=int, help="Repeats per item (default: the suite's)")
        parser.add_argument("--organisation", help="The organisation's slug (needed when several have the prompt)")
        parser.add_argument("--wait", action="store_true", help="Follow the run to its end; exit code = verdict")
        parser.add_argument("--inline", action="store_true", help="Execute the cells here (no worker needed)")
        parser.add_argument("--timeout", type=float, default=3600.0, help="Seconds --wait waits (default 3600)")
        parser.add_argument("--junit-xml", help="Write a JUnit XML report here (with --wait or --inline)")

    def handle(self, *args, **options):
        from evals import services
        from evals.models import Suite
        from registry.models import Prompt

        prompts = Prompt.objects.filter(name=options["prompt"]).select_related("organisation")
        if options["organisation"]:
            prompts = prompts.filter(organisation__slug=options["organisation"])
        prompts = list(prompts)
        if not prompts:
            raise CommandError(f"No prompt named {options['prompt']!r}.")
        if len(prompts) > 1:
            raise CommandError("Several organisations have this prompt: name one with --organisation.")
        prompt = prompts[0]
        suite = Suite.objects.filter(organisation=prompt.organisation, name=options["suite"]).first()
        if suite is None:
            raise CommandError(f"No suite named {options['suite']!r} in {prompt.organisation.slug}.")
        try:
            run = services.run_start(
                suite=suite,
                prompt=prompt,
                actor=Actor.system("eval_run command"),
                candidate_version=options["candidate"],
                baseline_label=options["baseline"],
                baseline_version=options["baseline_version"],
                model_override=options["model"],
                trigger="cli",
                repeats=options["repeats"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Started run {run.id}: {run.cells_total} cells.")
        if options["inline"]:
            from evals.executor import execute

            execute(run.id)
        elif not options["wait"]:
            return
        run = self._wait(run, options["timeout"])
        self._report(run, options["junit_xml"])

    def _wait(self, run, timeout: float):
        from evals.runs import TERMINAL

        deadline = time.monotonic() + timeout
        last = -1
        while True:
            run.refresh_from_db()
            if run.status in TERMINAL:
                return run
            if run.cells_done != last:
                self.stdout.write(f"  {run.cells_done}/{run.cells_total} cells")
                last = run.cells_done
            if time.monotonic() > deadline:
                return run
            time.sleep(0.5)

    def _report(self, run, junit_path: str | None) -> None:
        from evals.report import junit_xml, run_regressed, verdict_table

        self.stdout.write(verdict_table(run))
        if junit_path:
            Path(junit_path).write_text(junit_xml(run))
            self.stdout.write(f"JUnit XML written to {junit_path}")
        if run.status != "completed":
            self.stderr.write(f"The run did not complete: {run.status} {run.error}".rstrip())
            raise SystemExit(EXIT_FAILED)
        if run_regressed(run):
            self.stderr.write("Regression.")
            raise SystemExit(EXIT_REGRESSED)
