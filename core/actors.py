"""Who did something, in the kernel: accounts' permissions build an Actor and audit records one,
and neither may import the other's internals for it (audit's events refer to organisations by
string model reference, accounts' services record audit events)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import models


class ActorType(models.TextChoices):
    USER = "user"
    API_KEY = "api_key"
    SYSTEM = "system"


@dataclass(frozen=True)
class Actor:
    """Who did it: a user, an API key or the system (a task, a sweeper)."""

    type: str
    id: str = ""
    label: str = ""

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(ActorType.SYSTEM, "", label)

    @classmethod
    def for_user(cls, user) -> Actor:
        return cls(ActorType.USER, str(user.pk), user.get_username())

    @classmethod
    def for_api_key(cls, *, key_id: int, prefix: str) -> Actor:
        return cls(ActorType.API_KEY, str(key_id), prefix)
