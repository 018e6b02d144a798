"""Webhook signing secrets move from plaintext to a Fernet token (core.crypto), in place: the rows are
encrypted between adding the new column and dropping the old one, inside the migration's transaction,
so no secret is lost or left readable. Backwards decrypts again; a token under another key (the key
rotated since) cannot be decrypted, and that reversal stops rather than blank the secret."""

from django.db import migrations, models


def encrypt(apps, schema_editor):
    from core.crypto import secret_encrypt

    settings_model = apps.get_model("billing", "BillingSettings")
    for row in settings_model.objects.exclude(webhook_secret=""):
        row.webhook_secret_encrypted = secret_encrypt(row.webhook_secret)
        row.save(update_fields=["webhook_secret_encrypted"])


def decrypt(apps, schema_editor):
    from core.crypto import secret_decrypt

    settings_model = apps.get_model("billing", "BillingSettings")
    for row in settings_model.objects.exclude(webhook_secret_encrypted=""):
        plaintext = secret_decrypt(row.webhook_secret_encrypted)
        if plaintext is None:
            raise RuntimeError(
                f"the webhook secret of organisation {row.organisation_id} was encrypted under another key "
                "(STEWARD_ENCRYPTION_KEY or SECRET_KEY changed); set it again instead of reversing"
            )
        row.webhook_secret = plaintext
        row.save(update_fields=["webhook_secret"])


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_seed_prices")]
    operations = [
        migrations.AddField(
            model_name="billingsettings",
            name="webhook_secret_encrypted",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.RunPython(encrypt, decrypt),
        migrations.RemoveField(model_name="billingsettings", name="webhook_secret"),
    ]
