"""Datasets: immutable versions, CSV / JSON Lines import (every bad row reported, nothing written), export
round trips, size limits, and items taken from the request log (tenancy respected)."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from core.errors import Conflict, ValidationFailed
from evals import services
from evals.models import Dataset, DatasetItem, DatasetVersion
from tests.helpers import ACTOR

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(organisation):
    return services.dataset_create(organisation=organisation, name="faq", description="questions", actor=ACTOR)


def test_versions_are_numbered_and_hashed(dataset):
    v1 = services.dataset_version_create(
        dataset=dataset, items=[{"variables": {"q": "a"}}, {"key": "k2", "variables": {"q": "b"}}], actor=ACTOR
    )
    v2 = services.dataset_version_create(dataset=dataset, items=[{"variables": {"q": "a"}}], actor=ACTOR)
    assert (v1.number, v2.number) == (1, 2)
    assert [i.key for i in v1.items.all()] == ["row-1", "k2"]
    assert v1.item_count == 2 and len(v1.content_hash) == 64 and v1.content_hash != v2.content_hash
    dataset.refresh_from_db()
    assert dataset.latest_number == 2


def test_duplicate_dataset_name_conflicts(dataset, organisation, other_organisation):
    with pytest.raises(Conflict):
        services.dataset_create(organisation=organisation, name="faq", actor=ACTOR)
    services.dataset_create(organisation=other_organisation, name="faq", actor=ACTOR)  # another tenant: fine
    with pytest.raises(ValidationFailed):
        services.dataset_create(organisation=organisation, name="not a slug", actor=ACTOR)


CSV_BAD = (
    "id,vars.question,expected,metadata,critical\n"
    "a,What is Steward?,A gateway,,true\n"  # line 2: fine
    "b,Second,ok,{not json},false\n"  # line 3: bad metadata
    'c,"multi\nline",ok,,maybe\n'  # lines 4-5: bad critical (reported on line 4, where the row starts)
    "a,dup,ok,,\n"  # line 6: duplicate id
    "d,too,many,cells,,x\n"  # line 7: cell count
)


def test_csv_import_reports_every_bad_row_and_writes_nothing(dataset):
    with pytest.raises(services.DatasetImportError) as caught:
        services.dataset_import(dataset=dataset, fileobj=io.BytesIO(CSV_BAD.encode()), format="csv", actor=ACTOR)
    errors = caught.value.errors
    assert [e["line"] for e in errors] == [3, 4, 6, 7]
    assert "metadata" in errors[0]["reason"]
    assert "critical" in errors[1]["reason"]
    assert "duplicate id 'a'" in errors[2]["reason"]
    assert "cells" in errors[3]["reason"]
    assert DatasetVersion.objects.filter(dataset=dataset).count() == 0
    assert DatasetItem.objects.count() == 0


def test_csv_unknown_column_is_reported_on_the_header(dataset):
    with pytest.raises(services.DatasetImportError) as caught:
        services.dataset_import(
            dataset=dataset, fileobj=io.BytesIO(b"question,expected\nx,y\n"), format="csv", actor=ACTOR
        )
    assert caught.value.errors == [{"line": 1, "reason": "unknown column 'question'"}]


def test_jsonl_import_reports_every_bad_line(dataset):
    lines = [
        json.dumps({"id": "one", "vars": {"q": "a"}, "expected": "x"}),
        "{broken",
        json.dumps({"vars": {"q": "b"}, "expected": 3}),
        "",
        json.dumps(["not", "an", "object"]),
        json.dumps({"vars.q": "c", "colour": "red"}),
        json.dumps({"vars": "nope"}),
        json.dumps({"vars": {"q": "d"}, "critical": "yes"}),
    ]
    with pytest.raises(services.DatasetImportError) as caught:
        services.dataset_import(
            dataset=dataset, fileobj=io.BytesIO("\n".join(lines).encode()), format="jsonl", actor=ACTOR
        )
    assert [e["line"] for e in caught.value.errors] == [2, 3, 5, 6, 7, 8]
    assert "unknown key 'colour'" in caught.value.errors[3]["reason"]
    assert not DatasetVersion.objects.filter(dataset=dataset).exists()


def test_limits_rows_bytes_and_cells(dataset, settings):
    settings.STEWARD_EVALS_DATASET_MAX_ROWS = 2
    rows = "\n".join(json.dumps({"vars": {"q": str(i)}}) for i in range(3))
    with pytest.raises(services.DatasetImportError) as caught:
        services.dataset_import(dataset=dataset, fileobj=io.BytesIO(rows.encode()), format="jsonl", actor=ACTOR)
    assert caught.value.errors == [{"line": 3, "reason": "more than 2 rows"}]
    settings.STEWARD_EVALS_DATASET_MAX_ROWS = 100
    settings.STEWARD_EVALS_DATASET_MAX_CELL_CHARS = 100
    with pytest.raises(services.DatasetImportError) as caught:
        services.dataset_import(
            dataset=dataset, fileobj=io.BytesIO(f"vars.q\n{'x' * 101}\n".encode()), format="csv", actor=ACTOR
        )
    assert caught.value.errors[0]["line"] == 2 and "longer than 100" in caught.value.errors[0]["reason"]
    settings.STEWARD_EVALS_DATASET_MAX_BYTES = 1024
    with pytest.raises(services.DatasetImportError) as caught:
        services.dataset_import(dataset=dataset, fileobj=io.BytesIO(b"x" * 2000), format="csv", actor=ACTOR)
    assert "larger than 1024 bytes" in caught.value.errors[0]["reason"]
    assert not DatasetVersion.objects.filter(dataset=dataset).exists()


def test_not_utf8_is_reported_with_its_line(dataset):
    with pytest.raises(services.DatasetImportError) as caught:
        services.dataset_import(dataset=dataset, fileobj=io.BytesIO(b"vars.q\nok\n\xff\n"), format="csv", actor=ACTOR)
    assert caught.value.errors == [{"line": 3, "reason": "not UTF-8 text"}]


ITEMS = [
    {"key": "a", "variables": {"q": 'Comma, "quote"', "lang": "en"}, "expected": "line\nbreak", "critical": True},
    {"key": "b", "variables": {"q": "ünïcödé"}, "expected": "", "metadata": {"source": "faq", "n": 2}},
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_round_trips(dataset, fmt):
    v1 = services.dataset_version_create(dataset=dataset, items=ITEMS, actor=ACTOR)
    text = services.dataset_export(version=v1, format=fmt)
    v2 = services.dataset_import(dataset=dataset, fileobj=io.BytesIO(text.encode()), format=fmt, actor=ACTOR)
    assert v2.number == 2 and v2.source == fmt
    assert v2.content_hash == v1.content_hash


def test_csv_export_of_non_text_variables_uses_a_vars_column(dataset):
    items = [{"key": "x", "variables": {"n": 3, "tags": ["a", "b"]}}]
    v1 = services.dataset_version_create(dataset=dataset, items=items, actor=ACTOR)
    text = services.dataset_export(version=v1, format="csv")
    assert text.splitlines()[0] == "id,vars,expected,metadata,critical"
    v2 = services.dataset_import(dataset=dataset, fileobj=io.BytesIO(text.encode()), format="csv", actor=ACTOR)
    assert v2.content_hash == v1.content_hash


def _log(organisation, request_id: str, *, prompt="support-reply", version=1, status="ok", minutes_ago=1, body=True):
    from proxy.models import RequestBody, RequestLog

    started = timezone.now() - timedelta(minutes=minutes_ago)
    RequestLog.objects.create(
        request_id=request_id,
        organisation=organisation,
        endpoint="chat",
        model="dev-small",
        prompt_name=prompt,
        prompt_version_number=version,
        status=status,
        http_status=200,
        started_at=started,
    )
    if body:
        RequestBody.objects.create(
            request_id=request_id,
            organisation=organisation,
            started_at=started,
            request={"prompt": {"name": prompt, "version": version, "variables": {"customer_name": request_id}}},
            response={"choices": [{"message": {"role": "assistant", "content": f"reply to {request_id}"}}]},
        )


def test_items_from_requests_filter_and_append(dataset, organisation, other_organisation):
    services.dataset_version_create(dataset=dataset, items=[{"key": "seed", "variables": {"q": "s"}}], actor=ACTOR)
    _log(organisation, "r1", minutes_ago=5)
    _log(organisation, "r2", minutes_ago=4, version=2)
    _log(organisation, "r3", minutes_ago=3, status="error")
    _log(organisation, "r4", minutes_ago=2, body=False)  # body not stored: not eligible
    _log(organisation, "r5", minutes_ago=1, prompt="other")
    _log(other_organisation, "x1", minutes_ago=1)  # another tenant's request is never taken
    version = services.dataset_items_from_requests(
        dataset=dataset, actor=ACTOR, prompt_name="support-reply", status="ok", limit=10
    )
    items = list(version.items.all())
    assert [i.key for i in items] == ["seed", "req-r2", "req-r1"]
    assert items[1].variables == {"customer_name": "r2"} and items[1].expected == "reply to r2"
    assert items[1].metadata["prompt_version"] == 2 and version.source == "request_log"
    # Again: nothing new matches (already present), so no version is made.
    with pytest.raises(ValidationFailed):
        services.dataset_items_from_requests(dataset=dataset, actor=ACTOR, prompt_name="support-reply", status="ok")
    v3 = services.dataset_items_from_requests(
        dataset=dataset,
        actor=ACTOR,
        prompt_name="support-reply",
        prompt_version=1,
        since=timezone.now() - timedelta(minutes=3.5),
        limit=1,
    )
    assert [i.key for i in v3.items.all()][-1] == "req-r3"
    assert Dataset.objects.get(pk=dataset.pk).latest_number == 3
