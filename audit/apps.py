from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"

    def ready(self) -> None:
        from config.celery import Queue, beat_entry_add

        beat_entry_add(
            "audit-verifications-recover", task="audit.verifications_recover", schedule=300.0, queue=Queue.DEFAULT
        )
