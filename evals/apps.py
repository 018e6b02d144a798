from django.apps import AppConfig


class EvalsConfig(AppConfig):
    name = "evals"

    def ready(self) -> None:
        from django.db.models.signals import post_save

        from evals import drift  # noqa: F401  (registers the drift Celery tasks)
        from evals.gate import gate_provider_install
        from evals.hooks import audit_saved, run_saved

        gate_provider_install()
        post_save.connect(run_saved, sender="evals.Run", dispatch_uid="evals.run_saved")
        post_save.connect(audit_saved, sender="audit.AuditEvent", dispatch_uid="evals.audit_saved")
