from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Steward core"

    def ready(self) -> None:
        from core import celery_signals  # noqa: F401
