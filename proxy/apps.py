from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"

    def ready(self) -> None:
        from core.health import readiness_check_register
        from proxy.health import readiness_check

        readiness_check_register(readiness_check)
