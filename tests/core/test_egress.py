"""The egress policy's classifier and resolver (core.egress), without a server."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import subprocess
import sys

import pytest
from django.conf import settings as django_settings

from core import egress
from core.egress import EgressDenied, EgressPolicy, address_is_private

PRIVATE = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # CGNAT
    "224.0.0.1",  # multicast
    "240.0.0.1",
    "255.255.255.255",
    "198.18.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2001:db8::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", PRIVATE)
def test_addresses_that_are_not_globally_routable_are_private(address):
    assert address_is_private(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_not_private(address):
    assert not address_is_private(ipaddress.ip_address(address))


@pytest.fixture
def deny(settings):
    settings.STEWARD_EGRESS_ALLOW_PRIVATE = False
    settings.STEWARD_EGRESS_ALLOWED_HOSTS = ()
    return settings


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "127.1", "0177.0.0.1", "[::1]", "::ffff:127.0.0.1", "0.0.0.0"],
)
def test_loopback_in_any_spelling_is_refused_when_private_addresses_are_not_allowed(deny, host):
    with pytest.raises(EgressDenied) as denied:
        egress.resolve(host, 80)
    # The message names the host and the address (for the log), and says why.
    assert host.strip("[]") in denied.value.message and "refused" in denied.value.message
    with pytest.raises(EgressDenied):
        asyncio.run(egress.aresolve(host, 80))


def test_a_public_literal_is_returned_as_the_address_to_connect_to(deny):
    assert egress.resolve("8.8.8.8", 443) == ["8.8.8.8"]
    assert egress.resolve("[2606:4700:4700::1111]", 443) == ["2606:4700:4700::1111"]
    assert asyncio.run(egress.aresolve("1.1.1.1", 443)) == ["1.1.1.1"]


def test_an_unresolvable_name_is_an_os_error(deny):
    with pytest.raises(OSError):
        egress.resolve("no-such-host.invalid", 80)


def test_dev_default_allows_everything_and_leaves_names_to_the_connection(settings):
    settings.STEWARD_EGRESS_ALLOW_PRIVATE = True
    assert egress.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    assert egress.resolve("localhost", 80) == ["localhost"]
    assert egress.url_refusal("http://169.254.169.254/latest") is None


def test_allowed_hosts_admit_names_suffixes_and_networks(deny):
    deny.STEWARD_EGRESS_ALLOWED_HOSTS = ("localhost", "*.corp.example", "10.0.0.0/24", "::1")
    assert egress.resolve("localhost", 80)  # a listed name may resolve to anything
    assert egress.resolve("10.0.0.5", 80) == ["10.0.0.5"]
    assert egress.resolve("::ffff:10.0.0.5", 80)  # a mapped address matches the IPv4 network
    assert egress.resolve("[::1]", 80) == ["::1"]
    with pytest.raises(EgressDenied):
        egress.resolve("10.0.1.5", 80)  # outside the network
    with pytest.raises(EgressDenied):
        egress.resolve("127.0.0.1", 80)
    policy = egress.policy()
    assert policy.host_allowed("vllm.corp.example") and policy.host_allowed("VLLM.Corp.Example.")
    assert not policy.host_allowed("corp.example") and not policy.host_allowed("evilcorp.example")


def test_a_mix_of_public_and_private_addresses_keeps_only_the_public_ones():
    policy = EgressPolicy.build(allow_private=False, allowed_hosts="")
    assert policy.filter("rebind.example", ["127.0.0.1", "8.8.8.8", "fe80::1%eth0"]) == ["8.8.8.8"]
    with pytest.raises(EgressDenied, match=r"rebind\.example \(127\.0\.0\.1, 10\.0\.0\.1\)"):
        policy.filter("rebind.example", ["127.0.0.1", "10.0.0.1"])


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:8100/v1", True),
        ("http://localhost:8100/v1", True),
        ("http://api.localhost/v1", True),
        ("http://169.254.169.254/latest/meta-data", True),
        ("http://[::ffff:169.254.169.254]/", True),
        ("http://2130706433/", True),
        ("http://0x7f.1/", True),
        ("http://10.0.0.5:8000/v1", True),
        ("https://api.openai.com/v1", False),  # names are checked when connecting
        ("https://8.8.8.8/v1", False),
        ("https://1e100.net/v1", False),
    ],
)
def test_url_refusal_judges_literals_without_dns(deny, url, refused):
    assert (egress.url_refusal(url) is not None) is refused


def test_the_policy_follows_setting_changes(settings):
    settings.STEWARD_EGRESS_ALLOW_PRIVATE = False
    settings.STEWARD_EGRESS_ALLOWED_HOSTS = ()
    assert not egress.policy().allow_private
    settings.STEWARD_EGRESS_ALLOWED_HOSTS = ("127.0.0.0/8",)
    assert egress.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    settings.STEWARD_EGRESS_ALLOW_PRIVATE = True
    assert egress.policy().allow_private


EXTERNAL = (
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "SECRET_KEY",
    "STEWARD_ENV",
    "STEWARD_EGRESS_ALLOW_PRIVATE",
)
PROD = {
    "STEWARD_ENV": "prod",
    "SECRET_KEY": "s" * 50,
    "STEWARD_ENCRYPTION_KEY": "e" * 50,
    "STEWARD_AUDIT_KEY": "a" * 50,
    "DATABASE_URL": "postgres://u@127.0.0.1/db",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "STEWARD_ALLOWED_HOSTS": "steward.example.com",
}


def _settings_in_a_new_process(tmp_path, **env) -> subprocess.CompletedProcess:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.STEWARD_EGRESS_ALLOW_PRIVATE, settings.STEWARD_EGRESS_ALLOWED_HOSTS)"
    )
    environment = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
    environment.update(DJANGO_SETTINGS_MODULE="config.settings", STEWARD_VAR_DIR=str(tmp_path / "var"), **env)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=environment,
        capture_output=True,
        text=True,
        cwd=django_settings.BASE_DIR,
        timeout=60,
    )


def test_private_addresses_are_allowed_in_dev_and_refused_in_prod_by_default(tmp_path):
    dev = _settings_in_a_new_process(tmp_path, STEWARD_EGRESS_ALLOWED_HOSTS="VLLM.internal, *.corp.example,10.1.0.0/16")
    assert dev.returncode == 0, dev.stderr
    assert dev.stdout.strip() == "True ('vllm.internal', '*.corp.example', '10.1.0.0/16')"
    prod = _settings_in_a_new_process(tmp_path, **PROD)
    assert prod.returncode == 0, prod.stderr
    assert prod.stdout.strip() == "False ()"


def test_a_bad_allowed_hosts_entry_stops_the_process_naming_the_variable(tmp_path):
    result = _settings_in_a_new_process(tmp_path, STEWARD_EGRESS_ALLOWED_HOSTS="http://10.0.0.5/")
    assert result.returncode != 0
    assert "STEWARD_EGRESS_ALLOWED_HOSTS" in result.stderr
