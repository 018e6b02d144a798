import requests

from tests.helpers import log_of


def test_chat_completion_round_trip_metrics_and_stage_timings(proxy, dev_upstream):
    r = requests.post(
        f"{proxy.url}/chat/completions",
        json={"model": "dev-small", "messages": [{"role": "user", "content": "hello there"}]},
        headers=proxy.headers(),
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("Steward dev reply")
    assert r.headers["x-steward-model-deployment"] == "d0"
    row = log_of(r.headers["x-request-id"])
    assert row.status == "ok" and row.prompt_tokens > 0
    # The id travels to the upstream under Steward's own name: llama.cpp's server rejects a non-UUID x-request-id.
    sent = dev_upstream.stats()["last_headers"]
    assert sent["x-steward-request-id"] == r.headers["x-request-id"] and "x-request-id" not in sent
    assert 0 <= row.overhead_ms <= row.latency_ms and row.upstream_ms > 0
    stages = list(row.timings)
    # The stages ran in the documented order.
    order = ["authenticate", "resolve_prompt", "pre_filters", "admit", "reserve_budget", "call_upstream",
             "post_filters", "settle_cost", "log"]  # fmt: skip
    assert [s for s in order if s in stages] == order
    metrics = requests.get(proxy.url.removesuffix("/v1") + "/metrics", timeout=5).text
    assert 'steward_proxy_stage_milliseconds_bucket{le="+Inf",stage="authenticate"}' in metrics
    assert "steward_proxy_overhead_milliseconds_count" in metrics
    served = [line for line in metrics.splitlines() if line.startswith("steward_proxy_requests_total{")]
    assert any(
        'endpoint="chat.completions"' in line and 'status="ok"' in line and float(line.split()[-1]) >= 1
        for line in served
    )
    unauthenticated = requests.post(f"{proxy.url}/chat/completions", json={}, timeout=10)
    assert unauthenticated.status_code == 401
    metrics = requests.get(proxy.url.removesuffix("/v1") + "/metrics", timeout=5).text
    assert any(
        line.startswith("steward_proxy_requests_total{") and 'status="rejected"' in line
        for line in metrics.splitlines()
    )

    def unknown_urls() -> float:
        text = requests.get(proxy.url.removesuffix("/v1") + "/metrics", timeout=5).text
        line = 'steward_proxy_requests_total{endpoint="unknown",status="rejected"} '
        return sum(float(x.removeprefix(line)) for x in text.splitlines() if x.startswith(line))

    before = unknown_urls()
    assert requests.get(f"{proxy.url}/nowhere", headers=proxy.headers(), timeout=10).status_code == 404
    assert unknown_urls() == before + 1


def test_demo_seed_is_idempotent_and_prints_curl_lines(organisation, admin, django_capture_on_commit_callbacks):
    from core.actors import Actor
    from proxy.demo import demo_seed
    from proxy.models import ModelRoute

    lines = demo_seed(organisation=organisation, admin=admin.user, actor=Actor.system("tests"))
    demo_seed(organisation=organisation, admin=admin.user, actor=Actor.system("tests"))
    routes = {r.name: r for r in ModelRoute.objects.filter(organisation=organisation)}
    assert set(routes) == {"dev-small", "dev-large", "dev-embed"}
    assert routes["dev-large"].fallbacks == ["dev-small"]
    assert all(r.deployments.count() == 1 for r in routes.values())
    curl = [line for line in lines if "curl" in line]
    assert len(curl) == 2 and all("$STEWARD_URL" in c and "$STEWARD_API_KEY" in c for c in curl)
    assert '"stream": true' in curl[1]
