"""Datasets: immutable versions of items, CSV / JSON Lines import and export, items from the request log.

An item is {"key", "variables", "expected", "metadata", "critical"}:
- `key` pairs the same item across versions and variants (the file's `id`, else "row-<n>"; from the request
  log "req-<request id>"); unique within a version.
- `variables` fill the prompt's template; `expected` is the reference output (text, may be empty);
  `metadata` is a JSON object kept with the item; `critical` marks an item whose new failure blocks a promotion.

File formats (both import and export):
- JSON Lines: one object per line with keys `vars` (an object; or keys `vars.<name>`), `expected` (a string
  or null), `metadata` (an object), `critical` (a boolean), `id` (a string or integer). Blank lines are skipped.
- CSV (UTF-8, a header row): columns `vars.<name>` (the cell is the variable's text; an empty cell leaves the
  variable unset) or one `vars` column holding a JSON object (for values that are not text), `expected`,
  `metadata` (a JSON object, or empty), `critical` (true/false/yes/no/1/0, or empty for false), `id`.
Any other key or column is an error. Every invalid row is reported with its line number (1-based; for CSV the
line where the row starts, the header being line 1) and a reason, and nothing is written if any row is invalid.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import datetime
from typing import IO, Any

from django.conf import settings
from django.db import transaction

from accounts.models import Organisation
from audit.actions import Action
from audit.services import audit_event_record
from core.actors import Actor
from core.errors import ApplicationError, Conflict, ValidationFailed
from evals.models import Dataset, DatasetItem, DatasetVersion

FORMATS = ("csv", "jsonl")
KEY_MAX = 100
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0", ""}
_ITEM_FIELDS = {"id", "vars", "expected", "metadata", "critical"}


def _limits() -> tuple[int, int, int]:
    return (
        settings.STEWARD_EVALS_DATASET_MAX_ROWS,
        settings.STEWARD_EVALS_DATASET_MAX_BYTES,
        settings.STEWARD_EVALS_DATASET_MAX_CELL_CHARS,
    )


class DatasetImportError(ApplicationError):
    """A file with invalid rows: `errors` lists every one as {"line", "reason"}; nothing was imported."""

    status = 400
    code = "dataset_invalid"

    def __init__(self, errors: list[dict]):
        self.errors = errors
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"line {first['line']}: {first['reason']}{more}", extra={"errors": errors})


def _user(actor: Actor):
    from django.contrib.auth import get_user_model

    if actor.type == "user" and actor.id:
        return get_user_model().objects.filter(pk=actor.id).first()
    return None


# --- creating ----------------------------------------------------------------------------------


def name_checked(name: str) -> str:
    """`name` stripped, if it is a slug of at most 100 characters (ValidationFailed on `name` otherwise)."""
    from django.core.validators import validate_slug

    name = (name or "").strip()
    try:
        validate_slug(name)
    except Exception:
        raise ValidationFailed("name must be a slug (letters, digits, - and _).", param="name") from None
    if len(name) > 100:
        raise ValidationFailed("name is at most 100 characters.", param="name")
    return name


def dataset_create(*, organisation: Organisation, name: str, description: str = "", actor: Actor) -> Dataset:
    """A new, empty dataset (no version yet). Names are slugs, unique in the organisation (Conflict). Audited."""
    name = name_checked(name)
    with transaction.atomic():
        if Dataset.objects.filter(organisation=organisation, name=name).exists():
            raise Conflict(f"A dataset named {name!r} already exists.", param="name")
        dataset = Dataset.objects.create(organisation=organisation, name=name, description=description or "")
        audit_event_record(
            organisation_id=organisation.id,
            actor=actor,
            action=Action.DATASET_CREATED,
            target_type="dataset",
            target_id=dataset.id,
            after={"name": name},
        )
    return dataset


def _item_check(raw: Any, position: int) -> tuple[dict | None, str | None]:
    """(normalised item, None) or (None, reason) for one item given to dataset_version_create."""
    if not isinstance(raw, dict):
        return None, "an item must be an object"
    unknown = set(raw) - {"key", "variables", "expected", "metadata", "critical"}
    if unknown:
        return None, f"unknown field {sorted(unknown)[0]!r}"
    _, _, max_cell = _limits()
    key = raw.get("key")
    if key is None or key == "":
        key = f"row-{position + 1}"
    if isinstance(key, bool) or not isinstance(key, str | int):
        return None, "key must be a string"
    key = str(key).strip()
    if not key or len(key) > KEY_MAX:
        return None, f"key must be 1 to {KEY_MAX} characters"
    variables = raw.get("variables") or {}
    if not isinstance(variables, dict):
        return None, "variables must be an object"
    for name, value in variables.items():
        if not name or len(name) > 100:
            return None, "variable names are 1 to 100 characters"
        if len(value if isinstance(value, str) else json.dumps(value)) > max_cell:
            return None, f"variable {name!r} is longer than {max_cell} characters"
    expected = raw.get("expected")
    if expected is None:
        expected = ""
    if not isinstance(expected, str):
        return None, "expected must be a string"
    if len(expected) > max_cell:
        return None, f"expected is longer than {max_cell} characters"
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        return None, "metadata must be an object"
    if len(json.dumps(metadata)) > max_cell:
        return None, f"metadata is longer than {max_cell} characters"
    critical = raw.get("critical", False)
    if not isinstance(critical, bool):
        return None, "critical must be true or false"
    return {"key": key, "variables": variables, "expected": expected, "metadata": metadata, "critical": critical}, None


def items_validate(items: list) -> tuple[list[dict], list[dict]]:
    """(normalised items, errors as {"line": position + 1, "reason"}): keys must be unique."""
    max_rows, _, _ = _limits()
    if not isinstance(items, list):
        return [], [{"line": 0, "reason": "items must be a list"}]
    if len(items) > max_rows:
        return [], [{"line": 0, "reason": f"at most {max_rows} items per version ({len(items)} given)"}]
    clean, errors, seen = [], [], {}
    for position, raw in enumerate(items):
        item, reason = _item_check(raw, position)
        if item is not None and item["key"] in seen:
            item, reason = None, f"duplicate id {raw.get('key')!r} (first on line {seen[raw.get('key')]})"
        if reason:
            errors.append({"line": position + 1, "reason": reason})
            continue
        seen[item["key"]] = position + 1
        clean.append(item)
    return clean, errors


def content_hash(items: list[dict]) -> str:
    canonical = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def dataset_version_create(
    *, dataset: Dataset, items: list[dict], note: str = "", source: str = "api", actor: Actor
) -> DatasetVersion:
    """A new immutable version holding exactly `items`, written with the version in one transaction.

    Items are validated first (ValidationFailed with `extra.errors` listing every bad one; nothing written).
    The number is the dataset's next (the dataset row is locked, so two writers never take the same one). Audited.
    """
    clean, errors = items_validate(items)
    if errors:
        raise DatasetImportError(errors=errors)
    with transaction.atomic():
        locked = Dataset.objects.select_for_update().get(pk=dataset.pk)
        number = locked.latest_number + 1
        version = DatasetVersion.objects.create(
            dataset=locked,
            number=number,
            note=(note or "")[:500],
            source=(source or "")[:40],
            item_count=len(clean),
            content_hash=content_hash(clean),
            created_by=_user(actor),
            created_by_label=actor.label[:200],
        )
        DatasetItem.objects.bulk_create(
            [
                DatasetItem(
                    version=version,
                    position=position,
                    key=item["key"],
                    variables=item["variables"],
                    expected=item["expected"],
                    metadata=item["metadata"],
                    critical=item["critical"],
                )
                for position, item in enumerate(clean)
            ],
            batch_size=1000,
        )
        locked.latest_number = number
        locked.save(update_fields=["latest_number", "updated_at"])
        audit_event_record(
            organisation_id=locked.organisation_id,
            actor=actor,
            action=Action.DATASET_VERSION_CREATED,
            target_type="dataset",
            target_id=locked.id,
            after={"version": number, "items": len(clean), "source": version.source, "hash": version.content_hash},
        )
    dataset.latest_number = number
    return version


# --- import ------------------------------------------------------------------------------------


def _read_limited(fileobj: IO) -> bytes:
    _, max_bytes, _ = _limits()
    data = fileobj.read(max_bytes + 1)
    if isinstance(data, str):
        data = data.encode()
    if len(data) > max_bytes:
        raise DatasetImportError(errors=[{"line": 0, "reason": f"the file is larger than {max_bytes} bytes"}])
    return data


def _row_to_item(row: dict, *, csv_row: bool) -> dict:
    """An item from one parsed row (raises ValueError with the reason)."""
    unknown = [k for k in row if k not in _ITEM_FIELDS and not k.startswith("vars.")]
    if unknown:
        raise ValueError(f"unknown {'column' if csv_row else 'key'} {unknown[0]!r}")
    variables: dict = {}
    raw_vars = row.get("vars")
    if csv_row and raw_vars not in (None, ""):
        try:
            raw_vars = json.loads(raw_vars)
        except ValueError:
            raise ValueError("the vars column must hold a JSON object") from None
    if raw_vars not in (None, ""):
        if not isinstance(raw_vars, dict):
            raise ValueError("vars must be an object")
        variables.update(raw_vars)
    for column, value in row.items():
        if column.startswith("vars."):
            name = column[5:]
            if not name:
                raise ValueError("a vars. column needs a variable name")
            if csv_row and value == "":
                continue
            if name in variables:
                raise ValueError(f"variable {name!r} is given twice")
            variables[name] = value
    expected = row.get("expected")
    if expected is not None and not isinstance(expected, str):
        raise ValueError("expected must be a string")
    metadata = row.get("metadata")
    if csv_row:
        if metadata in (None, ""):
            metadata = {}
        else:
            try:
                metadata = json.loads(metadata)
            except ValueError:
                raise ValueError("metadata must be a JSON object") from None
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError("metadata must be an object")
    critical = row.get("critical", False)
    if csv_row:
        text = (critical or "").strip().lower()
        if text not in _TRUE | _FALSE:
            raise ValueError(f"critical must be true or false, not {critical!r}")
        critical = text in _TRUE
    elif critical is None:
        critical = False
    key = row.get("id")
    if isinstance(key, bool) or (key is not None and not isinstance(key, str | int)):
        raise ValueError("id must be a string or an integer")
    return {"key": key, "variables": variables, "expected": expected, "metadata": metadata, "critical": critical}


def _parse_jsonl(text: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    rows, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            errors.append({"line": number, "reason": f"not JSON: {exc.msg}"})
            continue
        if not isinstance(value, dict):
            errors.append({"line": number, "reason": "a line must hold a JSON object"})
            continue
        rows.append((number, value))
    return rows, errors


def _parse_csv(text: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as exc:
        return [], [{"line": 1, "reason": f"unreadable CSV: {exc}"}]
    header = [h.strip() for h in header]
    if header and header[0].startswith("\ufeff"):
        header[0] = header[0][1:]
    errors = []
    duplicate = {h for h in header if header.count(h) > 1}
    if duplicate:
        errors.append({"line": 1, "reason": f"duplicate column {sorted(duplicate)[0]!r}"})
    unknown = [h for h in header if h not in _ITEM_FIELDS and not h.startswith("vars.")]
    if unknown:
        errors.append({"line": 1, "reason": f"unknown column {unknown[0]!r}"})
    if errors:
        return [], errors
    rows = []
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append({"line": start, "reason": f"unreadable CSV: {exc}"})
            break
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            start = reader.line_num + 1
            continue
        if len(cells) != len(header):
            errors.append({"line": start, "reason": f"{len(cells)} cells, but the header has {len(header)} columns"})
        else:
            rows.append((start, dict(zip(header, cells, strict=True))))
        start = reader.line_num + 1
    return rows, errors


def dataset_import(*, dataset: Dataset, fileobj: IO, format: str, actor: Actor, note: str = "") -> DatasetVersion:
    """A new version from a CSV or JSON Lines file (module docstring: columns and keys).

    Raises DatasetImportError listing every invalid row ({"line", "reason"}); then nothing is written.
    """
    if format not in FORMATS:
        raise ValidationFailed(f"format must be one of {', '.join(FORMATS)}", param="format")
    max_rows, _, _ = _limits()
    data = _read_limited(fileobj)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetImportError(errors=[{"line": line, "reason": "not UTF-8 text"}]) from None
    rows, errors = _parse_jsonl(text) if format == "jsonl" else _parse_csv(text)
    if len(rows) > max_rows:
        errors.append({"line": rows[max_rows][0], "reason": f"more than {max_rows} rows"})
        rows = rows[:max_rows]
    items, lines, seen = [], [], {}
    for line, row in rows:
        try:
            item = _row_to_item(row, csv_row=format == "csv")
        except ValueError as exc:
            errors.append({"line": line, "reason": str(exc)})
            continue
        checked, reason = _item_check(item, len(items))
        if checked is None:
            errors.append({"line": line, "reason": reason})
            continue
        if checked["key"] in seen:
            errors.append(
                {"line": line, "reason": f"duplicate id {checked['key']!r} (first on line {seen[checked['key']]})"}
            )
            continue
        seen[checked["key"]] = line
        items.append(checked)
        lines.append(line)
    if errors:
        raise DatasetImportError(errors=sorted(errors, key=lambda e: e["line"]))
    if not items:
        raise DatasetImportError(errors=[{"line": 0, "reason": "the file has no rows"}])
    return dataset_version_create(dataset=dataset, items=items, note=note, source=format, actor=actor)


# --- export ------------------------------------------------------------------------------------


def _item_dict(item: DatasetItem) -> dict:
    return {
        "key": item.key,
        "variables": item.variables,
        "expected": item.expected,
        "metadata": item.metadata,
        "critical": item.critical,
    }


def dataset_export(*, version: DatasetVersion, format: str) -> str:
    """The version's items as CSV or JSON Lines text that dataset_import reads back to the same items.

    CSV uses `vars.<name>` columns when every variable value is text, else one `vars` JSON column.
    """
    if format not in FORMATS:
        raise ValidationFailed(f"format must be one of {', '.join(FORMATS)}", param="format")
    items = [_item_dict(i) for i in version.items.order_by("position")]
    if format == "jsonl":
        lines = [
            json.dumps(
                {
                    "id": i["key"],
                    "vars": i["variables"],
                    "expected": i["expected"],
                    "metadata": i["metadata"],
                    "critical": i["critical"],
                },
                ensure_ascii=False,
            )
            for i in items
        ]
        return "".join(line + "\n" for line in lines)
    text_only = all(isinstance(v, str) and v != "" for i in items for v in i["variables"].values())
    names = sorted({n for i in items for n in i["variables"]}) if text_only else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["id", *(f"vars.{n}" for n in names), *([] if text_only else ["vars"]), "expected", "metadata", "critical"]
    )
    for i in items:
        cells = [i["key"]]
        if text_only:
            cells += [i["variables"].get(n, "") for n in names]
        else:
            cells.append(json.dumps(i["variables"], ensure_ascii=False))
        cells += [
            i["expected"],
            json.dumps(i["metadata"], ensure_ascii=False) if i["metadata"] else "",
            "true" if i["critical"] else "false",
        ]
        writer.writerow(cells)
    return out.getvalue()


# --- from the request log -----------------------------------------------------------------------


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def _response_text(response: Any) -> str:
    if not isinstance(response, dict):
        return ""
    if response.get("stream"):
        return str(response.get("content") or "")
    try:
        return str(response["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


def dataset_items_from_requests(
    *,
    dataset: Dataset,
    actor: Actor,
    prompt_name: str = "",
    prompt_version: int | None = None,
    status: str = "",
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
    note: str = "",
) -> DatasetVersion:
    """A new version: the latest version's items plus one item per matching logged chat request.

    Only requests of the dataset's organisation whose body was stored (proxy settings: store bodies) are
    eligible. The filter is on the request log: prompt name, prompt version number, status, a time range
    (started_at in [since, until)), newest first, at most `limit` (1..1000). Each item: key "req-<request id>",
    variables the request's prompt variables (or {"input": the last user message} without a prompt
    reference), expected the logged response's text, metadata {request_id, model, prompt_version, started_at}.
    Requests already in the latest version are skipped. ValidationFailed when nothing new matched.
    """
    from proxy.models import RequestBody, RequestLog

    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise ValidationFailed("limit must be between 1 and 1000", param="limit")
    logs = RequestLog.objects.filter(organisation_id=dataset.organisation_id, endpoint="chat")
    if prompt_name:
        logs = logs.filter(prompt_name=prompt_name)
    if prompt_version is not None:
        logs = logs.filter(prompt_version_number=prompt_version)
    if status:
        logs = logs.filter(status=status)
    if since is not None:
        logs = logs.filter(started_at__gte=since)
    if until is not None:
        logs = logs.filter(started_at__lt=until)
    latest = dataset.versions.order_by("-number").first()
    previous = [_item_dict(i) for i in latest.items.order_by("position")] if latest else []
    present = {i["key"] for i in previous}
    fresh: list[dict] = []
    batch_start = 0
    # Bodies are looked up per batch of candidates (never for the whole organisation); some candidates
    # have no stored body, so look further than `limit`, within a bound.
    candidates = list(
        logs.order_by("-started_at").values(
            "request_id", "model", "prompt_version_number", "prompt_name", "started_at"
        )[: limit * 5 + 100]
    )
    while len(fresh) < limit and batch_start < len(candidates):
        batch = candidates[batch_start : batch_start + 500]
        batch_start += 500
        bodies = {
            b.request_id: b
            for b in RequestBody.objects.filter(
                organisation_id=dataset.organisation_id, request_id__in=[c["request_id"] for c in batch]
            )
        }
        for log in batch:
            body = bodies.get(log["request_id"])
            key = f"req-{log['request_id']}"[:KEY_MAX]
            if body is None or key in present or not isinstance(body.request, dict):
                continue
            reference = body.request.get("prompt")
            if isinstance(reference, dict) and isinstance(reference.get("variables"), dict):
                variables = reference["variables"]
            else:
                variables = {"input": _last_user_text(body.request.get("messages"))}
            fresh.append(
                {
                    "key": key,
                    "variables": variables,
                    "expected": _response_text(body.response),
                    "metadata": {
                        "request_id": log["request_id"],
                        "model": log["model"],
                        "prompt": log["prompt_name"],
                        "prompt_version": log["prompt_version_number"],
                        "started_at": log["started_at"].isoformat(),
                    },
                    "critical": False,
                }
            )
            present.add(key)
            if len(fresh) >= limit:
                break
    if not fresh:
        raise ValidationFailed("No logged request with a stored body matches the filter.", param="filter")
    return dataset_version_create(
        dataset=dataset,
        items=previous + fresh,
        note=note or f"{len(fresh)} items from the request log",
        source="request_log",
        actor=actor,
    )
