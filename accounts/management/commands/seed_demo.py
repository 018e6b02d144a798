"""Seed a demo organisation idempotently and print what a newcomer needs to try Steward.

Each app may contribute with a `demo.py` module defining
`demo_seed(*, organisation, admin, actor) -> list[str]` (lines to print).
"""

from __future__ import annotations

import importlib
import json
import secrets

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import ApiKey, Organisation
from accounts.roles import Role
from accounts.services import api_key_create, membership_set, organisation_create, team_create
from core.actors import Actor

CREDENTIALS_FILE = "demo_credentials.json"


class Command(BaseCommand):
    help = "Create (or reuse) the demo organisation, admin, team and API key, and print how to use them."

    def add_arguments(self, parser):
        parser.add_argument("--allow-prod", action="store_true", help="Seed even when STEWARD_ENV=prod.")

    def handle(self, *args, allow_prod: bool = False, **options):
        if settings.IS_PROD and not allow_prod:
            raise CommandError("Refusing to seed demo data with STEWARD_ENV=prod (pass --allow-prod to insist).")
        path = settings.VAR_DIR / CREDENTIALS_FILE
        saved = json.loads(path.read_text()) if path.exists() else {}
        actor = Actor.system("seed_demo")
        User = get_user_model()
        with transaction.atomic():
            org = Organisation.objects.filter(slug="demo").first() or organisation_create(
                name="Demo organisation", slug="demo", actor=actor
            )
            team = org.teams.filter(name="Platform").first() or team_create(
                organisation=org, name="Platform", actor=actor
            )
            admin = User.objects.filter(username="admin").first()
            password = saved.get("admin_password")
            if admin is None or password is None or not admin.check_password(password):
                password = secrets.token_urlsafe(12)
                if admin is None:
                    admin = User.objects.create_user(username="admin", password=password, email="admin@example.com")
                else:
                    admin.set_password(password)
                    admin.save(update_fields=["password"])
            if not admin.is_staff or not admin.is_superuser:
                admin.is_staff = admin.is_superuser = True
                admin.save(update_fields=["is_staff", "is_superuser"])
            membership_set(organisation=org, user=admin, roles=[r.value for r in Role], actor=actor)
            secret = saved.get("api_key")
            key_id = saved.get("api_key_id")
            key = ApiKey.objects.filter(pk=key_id, organisation=org).first() if key_id else None
            if key is None or not key.is_active or secret is None:
                created = api_key_create(
                    organisation=org, name="demo service", team=team, actor=actor, created_by=admin
                )
                secret, key_id = created.secret, created.api_key.id
            extra_lines: list[str] = []
            for config in apps.get_app_configs():
                try:
                    module = importlib.import_module(f"{config.name}.demo")
                except ModuleNotFoundError as exc:
                    if exc.name != f"{config.name}.demo":
                        raise
                    continue
                extra_lines += module.demo_seed(organisation=org, admin=admin, actor=actor) or []
        path.write_text(json.dumps({"admin_password": password, "api_key": secret, "api_key_id": key_id}))
        path.chmod(0o600)
        url = settings.STEWARD_PUBLIC_URL
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Steward demo is ready. Paste into a shell:",
                    "",
                    f"  export STEWARD_URL={url}",
                    f"  export STEWARD_API_KEY={secret}",
                    "",
                    f"Web UI: {url}/  (user: admin  password: {password})",
                    *extra_lines,
                    "",
                ]
            )
        )
