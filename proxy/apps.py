from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"

    def ready(self) -> None:
        from django.conf import settings

        from config.celery import Queue, beat_entry_add
        from core.health import readiness_check_register
        from proxy.health import readiness_check
        from proxy.invoke import chat_completion_invoke, playground_key_ensure
        from registry.playground import playground_backend_register

        beat_entry_add(
            "proxy-request-log-drain",
            task="proxy.request_log_drain",
            schedule=settings.STEWARD_PROXY_LOG_DRAIN_SECONDS,
            queue=Queue.PROXY_LOG,
        )
        beat_entry_add(
            "proxy-deployments-health-check",
            task="proxy.deployments_health_check",
            schedule=settings.STEWARD_PROXY_HEALTH_CHECK_SECONDS,
        )
        beat_entry_add("proxy-request-bodies-purge", task="proxy.request_bodies_purge", schedule=3600.0)
        readiness_check_register(readiness_check)
        # The registry's playground runs versions through the proxy without importing it (layers point down).
        playground_backend_register(key_ensure=playground_key_ensure, invoke=chat_completion_invoke)
