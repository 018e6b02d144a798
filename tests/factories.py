"""factory_boy factories for the common test data, each creating through the app's service.

The services write the audit events, validate and set the defaults; a factory that wrote rows
directly would make data the application could not have made (and an audit chain with gaps), so every
`_create` here calls the service and only the field values come from factory_boy.
"""

from __future__ import annotations

import factory

from accounts.models import ApiKey, Organisation
from proxy.models import Deployment, ModelRoute
from registry.models import Prompt, PromptVersion
from tests.helpers import ACTOR, Persona


class _ServiceFactory(factory.Factory):
    """factory_boy fills in the keyword arguments; each subclass's `_create` passes them to its service.
    (`Meta.model` names what the service makes; factory_boy never instantiates it.)"""

    class Meta:
        abstract = True

    @classmethod
    def _build(cls, model_class, *args, **kwargs):
        raise NotImplementedError("these factories create through the services; there is no unsaved build")


class OrganisationFactory(_ServiceFactory):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Organisation {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")

    @classmethod
    def _create(cls, model_class, **kwargs):
        from accounts.services import organisation_create

        return organisation_create(actor=ACTOR, **kwargs)


class PersonaFactory(_ServiceFactory):
    """A user with a password and roles in an organisation: `Persona(user, password, organisation, roles)`."""

    class Meta:
        model = Persona

    username = factory.Sequence(lambda n: f"user-{n}")
    password = "correct horse battery staple 9"
    organisation = factory.SubFactory(OrganisationFactory)
    roles = factory.LazyFunction(list)

    @classmethod
    def _create(cls, model_class, *, username, password, organisation, roles):
        from accounts.services import membership_set, user_create

        user = user_create(username=username, password=password)
        membership_set(organisation=organisation, user=user, roles=[str(r) for r in roles], actor=ACTOR)
        return Persona(user=user, password=password, organisation=organisation, roles=list(roles))


class ApiKeyFactory(_ServiceFactory):
    """An API key: returns the service's result, `.api_key` and the `.secret` shown once."""

    class Meta:
        model = ApiKey

    organisation = factory.SubFactory(OrganisationFactory)
    name = "test key"

    @classmethod
    def _create(cls, model_class, **kwargs):
        from accounts.services import api_key_create

        return api_key_create(actor=ACTOR, **kwargs)


class PromptFactory(_ServiceFactory):
    class Meta:
        model = Prompt

    organisation = factory.SubFactory(OrganisationFactory)
    name = factory.Sequence(lambda n: f"prompt-{n}")

    @classmethod
    def _create(cls, model_class, **kwargs):
        from registry.services import prompt_create

        return prompt_create(actor=ACTOR, **kwargs)


class PromptVersionFactory(_ServiceFactory):
    """A version of a prompt with a system and a user message (`text`, `system`) on the dev model."""

    class Meta:
        model = PromptVersion

    prompt = factory.SubFactory(PromptFactory)
    text = "Hello {{ customer_name }}"
    system = "Be brief."
    model = "dev-small"
    params = factory.LazyFunction(lambda: {"temperature": 0.2})
    variables = factory.LazyFunction(lambda: [{"name": "customer_name", "type": "string", "required": True}])
    commit_message = "edit"

    @classmethod
    def _create(cls, model_class, *, text, system, **kwargs):
        from registry.services import prompt_version_create

        kwargs.setdefault("actor", ACTOR)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
        return prompt_version_create(messages=messages, **kwargs)


class RouteFactory(_ServiceFactory):
    class Meta:
        model = ModelRoute

    organisation = factory.SubFactory(OrganisationFactory)
    name = "dev-small"

    @classmethod
    def _create(cls, model_class, **kwargs):
        from proxy.services import route_create

        return route_create(actor=ACTOR, **kwargs)


class DeploymentFactory(_ServiceFactory):
    """A deployment of a route; a model without a price is made free for the organisation first (a
    deployment is enabled only for a priced model)."""

    class Meta:
        model = Deployment

    route = factory.SubFactory(RouteFactory)
    name = factory.Sequence(lambda n: f"d{n}")
    model = "dev-small"
    api_base = ""

    @classmethod
    def _create(cls, model_class, **kwargs):
        from proxy.services import deployment_create
        from tests.helpers import free_unless_priced

        free_unless_priced(kwargs["route"].organisation, kwargs["model"])
        return deployment_create(actor=ACTOR, **kwargs)


class SafetyPolicyFactory(_ServiceFactory):
    """A stored safety policy (through safety.policy_services); no filters unless given."""

    class Meta:
        model = "safety.SafetyPolicy"

    organisation = factory.SubFactory(OrganisationFactory)
    name = factory.Sequence(lambda n: f"policy-{n}")

    @classmethod
    def _create(cls, model_class, **kwargs):
        from safety.policy_services import policy_create

        return policy_create(actor=ACTOR, **kwargs)
