from django.apps import AppConfig


class ProxyConfig(AppConfig):
    name = "proxy"

    def ready(self) -> None:
        from core.health import readiness_check_register
        from proxy.billing_targets import billing_targets_register
        from proxy.health import readiness_check
        from proxy.invoke import chat_completion_invoke, playground_key_ensure
        from proxy.moderation_caller import amoderation_call
        from proxy.safety_targets import safety_targets_register
        from proxy.selectors import route_names_list
        from registry.playground import playground_backend_register
        from safety.filters.llm_moderation import moderation_caller_set

        readiness_check_register(readiness_check)
        # The registry's playground runs versions through the proxy without importing it (layers point down).
        playground_backend_register(
            key_ensure=playground_key_ensure, invoke=chat_completion_invoke, route_names=route_names_list
        )
        # Safety's policy attachments validate prompt and route ids through lookups registered here (same reason).
        safety_targets_register()
        # Billing's forms pick prompts and deployments by name through lookups registered here (same reason).
        billing_targets_register()
        # The LLM moderation filter calls its model through Steward itself (safety cannot import the proxy).
        moderation_caller_set(amoderation_call)
