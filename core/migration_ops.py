"""Helpers for migrations that need raw SQL per database vendor (triggers, mostly)."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import migrations


def vendor_sql(
    *,
    pg_forward: str,
    pg_backward: str,
    sqlite_forward: Sequence[str],
    sqlite_backward: Sequence[str],
) -> migrations.RunPython:
    """A reversible operation running the PostgreSQL or the SQLite statements, whichever database this is.

    PostgreSQL gets one script (a `%` must be doubled, as for any parameterised statement);
    SQLite executes one statement at a time. Any other vendor is refused rather than left unprotected.
    """

    def run(schema_editor, pg: str, sqlite: Sequence[str], *, forward: bool) -> None:
        vendor = schema_editor.connection.vendor
        if vendor == "postgresql":
            schema_editor.execute(pg)
        elif vendor == "sqlite":
            for statement in sqlite:
                schema_editor.execute(statement)
        elif forward:
            raise RuntimeError(f"Steward supports PostgreSQL and SQLite, not {vendor}")

    def forward(apps, schema_editor):
        run(schema_editor, pg_forward, sqlite_forward, forward=True)

    def backward(apps, schema_editor):
        run(schema_editor, pg_backward, sqlite_backward, forward=False)

    return migrations.RunPython(forward, backward)
