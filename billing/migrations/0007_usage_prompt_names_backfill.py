"""Name the prompts of ledger lines and rollups recorded before the ledger carried the names, from
the registry's tables as they are now (a prompt deleted since stays unnamed).

The ledger refuses UPDATE (0002); only these two label columns are written, with the trigger
held off for this transaction. SQLite rebuilt the table to add the columns (it cannot add a NOT
NULL column in place), which dropped its triggers: they are created again here."""

from django.db import migrations

SQLITE_TRIGGERS = [
    """CREATE TRIGGER IF NOT EXISTS billing_usageline_no_update BEFORE UPDATE ON billing_usageline
       BEGIN SELECT RAISE(ABORT, 'billing_usageline is append-only: UPDATE refused'); END;""",
    """CREATE TRIGGER IF NOT EXISTS billing_usageline_no_delete BEFORE DELETE ON billing_usageline
       BEGIN SELECT RAISE(ABORT, 'billing_usageline is append-only: DELETE refused'); END;""",
]


def _names(apps, model) -> None:
    Prompt = apps.get_model("registry", "Prompt")
    PromptVersion = apps.get_model("registry", "PromptVersion")
    rows = model.objects.filter(prompt_name="").exclude(prompt_id=None)
    version_ids = set(rows.exclude(prompt_version_id=None).values_list("prompt_version_id", flat=True).distinct())
    for version in PromptVersion.objects.filter(pk__in=version_ids).select_related("prompt"):
        rows.filter(prompt_version_id=version.pk).update(
            prompt_name=version.prompt.name, prompt_version_number=version.number
        )
    prompt_ids = set(rows.filter(prompt_version_id=None).values_list("prompt_id", flat=True).distinct())
    for prompt in Prompt.objects.filter(pk__in=prompt_ids):
        rows.filter(prompt_version_id=None, prompt_id=prompt.pk).update(prompt_name=prompt.name)


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute("ALTER TABLE billing_usageline DISABLE TRIGGER billing_usageline_no_update")
    elif vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS billing_usageline_no_update")
    _names(apps, apps.get_model("billing", "UsageLine"))
    _names(apps, apps.get_model("billing", "UsageDaily"))
    if vendor == "postgresql":
        schema_editor.execute("ALTER TABLE billing_usageline ENABLE TRIGGER billing_usageline_no_update")
    elif vendor == "sqlite":
        for statement in SQLITE_TRIGGERS:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("billing", "0006_usage_prompt_names"), ("registry", "0001_initial")]
    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
