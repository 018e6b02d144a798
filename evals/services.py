"""The evaluations' write services, in one import place (each concern lives in its own module)."""

from evals.datasets import (
    DatasetImportError,
    dataset_create,
    dataset_export,
    dataset_import,
    dataset_items_from_requests,
    dataset_version_create,
)
from evals.runs import run_cancel, run_finish_if_done, run_start
from evals.suites import suite_create, suite_delete, suite_update
from evals.summary import run_summary_compute

__all__ = [
    "DatasetImportError",
    "dataset_create",
    "dataset_export",
    "dataset_import",
    "dataset_items_from_requests",
    "dataset_version_create",
    "run_cancel",
    "run_finish_if_done",
    "run_start",
    "run_summary_compute",
    "suite_create",
    "suite_delete",
    "suite_update",
]
