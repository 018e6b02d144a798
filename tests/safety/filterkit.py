"""Filters for tests of the policy engine, added under names of their own (`safety.policies.extra_filters`),
and a helper storing a policy with the ORM (policy_services validates against the built-in filters only)."""

from __future__ import annotations

import asyncio

from safety.filters.base import Action, Filter, FilterResult, Finding
from safety.policies import extra_filters


class WordFilter(Filter):
    """Finds each listed word: settings {"words": {"word": "kind"}, "proposed": "flag"}."""

    name = "test_words"
    kinds = ("word",)

    def check(self, text, context):
        findings = []
        for word, kind in self.settings.get("words", {}).items():
            start = text.find(word)
            while start != -1:
                findings.append(Finding(kind, start, start + len(word), detail=f"the word {kind}"))
                start = text.find(word, start + len(word))
        findings.sort(key=lambda f: f.start)
        return FilterResult(tuple(findings), Action(self.settings.get("proposed", "flag")))


class RaisingFilter(Filter):
    name = "test_raises"

    def check(self, text, context):
        raise RuntimeError("this filter always fails")


class SleepingFilter(Filter):
    """An async filter that waits `seconds`, then reports `kind` if set (records when it ran in `log`)."""

    name = "test_sleeps"
    is_async = True
    deterministic = False
    log: list = []

    async def acheck(self, text, context):
        SleepingFilter.log.append(("start", self.settings.get("tag")))
        await asyncio.sleep(self.settings.get("seconds", 0))
        SleepingFilter.log.append(("end", self.settings.get("tag")))
        kind = self.settings.get("kind")
        if kind:
            return FilterResult((Finding(kind, 0, 0),), Action.FLAG)
        return FilterResult()


class RewriteFilter(Filter):
    """Output only: rewrites "[Source: x]" as "[1]" and reports the source in `extra` (a tiny citation cleaner)."""

    name = "test_rewrite"

    def check(self, text, context):
        if "[Source: x]" not in text:
            return FilterResult()
        return FilterResult(rewrite=text.replace("[Source: x]", "[1]"), extra={"citations": [{"n": 1, "source": "x"}]})


for _cls in (WordFilter, RaisingFilter, SleepingFilter, RewriteFilter):
    extra_filters[_cls.name] = _cls


def words(mapping: dict[str, str], **entry) -> dict:
    return {"filter": "test_words", "settings": {"words": mapping}, **entry}


def policy_store(organisation, *, scope="organisation", target_id=0, name="p", **fields):
    """A stored policy attached to `scope`/`target_id`, every process told (as policy_services does)."""
    from core.invalidation import invalidate
    from safety.models import PolicyAttachment, SafetyPolicy

    policy = SafetyPolicy.objects.create(organisation=organisation, name=name, **fields)
    PolicyAttachment.objects.update_or_create(
        organisation=organisation, scope=scope, target_id=target_id, defaults={"policy": policy}
    )
    invalidate("safety_policies")
    return policy
