"""Load the global price table from litellm's bundled cost map (no network) and the demo prices of
the development models. Later litellm upgrades add new models with `manage.py billing_prices_seed`."""

from django.db import migrations


def forward(apps, schema_editor):
    from billing.services import prices_seed

    prices_seed(price_model=apps.get_model("billing", "Price"))


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_ledger_append_only")]
    operations = [migrations.RunPython(forward, migrations.RunPython.noop)]
