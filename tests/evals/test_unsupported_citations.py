"""The citations filter's hallucination signal, counted per prompt version: through the real proxy
(the policy's `citations` filter on a prompt's answers), into the request log, onto the prompt's page."""

from __future__ import annotations

import openai
from django.urls import reverse

from tests.factories import PromptFactory, PromptVersionFactory
from tests.helpers import log_of, login
from tests.safety.filterkit import policy_store


def _ask(proxy, *, version: int, question: str) -> str:
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.secret, max_retries=0, timeout=30)
    raw = client.chat.completions.with_raw_response.create(
        model="dev-small",
        messages=[{"role": "user", "content": f"[Source: handbook] The return window is 30 days.\n{question}"}],
        extra_body={"prompt": {"name": "cited", "version": version, "variables": {"customer_name": "Ada"}}},
    )
    raw.parse()
    return raw.headers["x-request-id"]


def test_citations_of_unsupplied_sources_are_counted_per_version(proxy, dev_upstream, client, prompt_engineer):
    organisation = proxy.organisation
    prompt = PromptFactory(organisation=organisation, name="cited")
    PromptVersionFactory(prompt=prompt)
    PromptVersionFactory(prompt=prompt, text="Hi {{ customer_name }}")
    policy_store(organisation, filters=[{"filter": "citations", "directions": ["output"]}], actions={"*": "flag"})

    dev_upstream.control(reply="Returns take 30 days [Source: handbook] or 90 [Source: blog] [Source: forum].")
    made_up = log_of(_ask(proxy, version=1, question="How long?"))
    dev_upstream.control(reply="Returns take 30 days [Source: handbook].")
    supported = log_of(_ask(proxy, version=2, question="How long?"))
    again = log_of(_ask(proxy, version=2, question="And refunds?"))

    assert made_up.unsupported_citations == 2  # "blog" and "forum" were never supplied
    assert supported.unsupported_citations == 0 and again.unsupported_citations == 0
    assert [f["kind"] for f in made_up.safety["output"]["findings"]] == ["citation_unknown_source"] * 2

    login(client, prompt_engineer)
    html = client.get(reverse("evals:prompt_evals", args=["cited"])).content.decode()
    section = html[html.index('id="h-citations"') :]
    section = section[: section.index("</section>")]
    assert "<td>v1</td><td>1</td><td>2</td>" in section
    assert "<td>v2</td>" not in section
