"""Create the PostgreSQL database named by DATABASE_URL if it does not exist yet (benchmarks, first deploys)."""

from __future__ import annotations

import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand
from psycopg import sql


class Command(BaseCommand):
    help = "Create DATABASE_URL's PostgreSQL database if missing (SQLite files are created on first use)."

    def handle(self, *args, **options):
        db = settings.DATABASES["default"]
        if not settings.IS_POSTGRES:
            self.stdout.write("SQLite: nothing to create")
            return
        params = {
            "host": db.get("HOST") or "127.0.0.1",
            "port": db.get("PORT") or 5432,
            "user": db.get("USER") or "postgres",
            "password": db.get("PASSWORD") or None,
            "dbname": "postgres",
            "autocommit": True,
        }
        with psycopg.connect(**{k: v for k, v in params.items() if v is not None}) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone()
            if exists:
                self.stdout.write(f"database {db['NAME']} exists")
                return
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
            self.stdout.write(f"created database {db['NAME']}")
