"""Rate limits hold across processes: two Steward processes, several client processes, one key."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from django.conf import settings

from tests.helpers import free_port, subprocess_env, wait_for_port

CLIENT = textwrap.dedent(
    """
    import json, sys
    from concurrent.futures import ThreadPoolExecutor
    import requests

    urls, secret, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    body = {"model": "dev-small", "messages": [{"role": "user", "content": "limit me"}]}

    def fire(i):
        r = requests.post(urls[i % len(urls)] + "/v1/chat/completions", json=body,
                          headers={"Authorization": "Bearer " + secret}, timeout=30)
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(fire, range(n)))
    print(json.dumps(codes))
    """
)


def test_rpm_limit_holds_across_processes(proxy, api_key_factory, tmp_path):
    _, secret = api_key_factory(rpm_limit=25)
    port = free_port()
    log = open(tmp_path / "steward.log", "w")  # noqa: SIM115 (closed after the server stops)
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "warning", "--loop", "uvloop", "--http", "core.httpserver:HttpProtocol"],
        env=subprocess_env(), cwd=settings.BASE_DIR, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=30)
        urls = [proxy.url.removesuffix("/v1"), f"http://127.0.0.1:{port}"]
        clients = [
            subprocess.Popen(
                [sys.executable, "-c", CLIENT, json.dumps(urls), secret, "20"],
                env=subprocess_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        codes = []
        for client in clients:
            out, err = client.communicate(timeout=120)
            assert client.returncode == 0, err
            codes += json.loads(out)
    finally:
        server.terminate()
        server.wait(10)
        log.close()
    assert len(codes) == 80
    assert set(codes) <= {200, 429}
    # Exactly the limit is admitted: never more (atomic across processes), and no fewer (no false rejections).
    assert codes.count(200) == 25
