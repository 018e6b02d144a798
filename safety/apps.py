from django.apps import AppConfig


class SafetyConfig(AppConfig):
    name = "safety"

    def ready(self) -> None:
        from safety.moderation_metrics import metrics_register

        metrics_register()
