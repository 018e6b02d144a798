from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self) -> None:
        from config.celery import Queue, beat_entry_add

        beat_entry_add(
            "billing-reservations-sweep", task="billing.reservations_sweep", schedule=30.0, queue=Queue.DEFAULT
        )
        beat_entry_add("billing-rollups-update", task="billing.rollups_update", schedule=30.0, queue=Queue.DEFAULT)
