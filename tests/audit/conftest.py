from __future__ import annotations

import pytest

from tests.helpers import record


@pytest.fixture
def chain(organisation):
    """The organisation's chain with five events: #1 organisation.created, #2..#5 team.updated."""
    record(organisation, 4)
    return organisation
