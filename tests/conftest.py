import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def fixture_dir(name: str) -> Path:
    d = FIXTURES / name
    if not d.exists():
        pytest.skip(f"fixture {d} is missing: run tests/fixtures/make_fixtures.py (needs torch + transformers)")
    return d


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.exists():
        pytest.skip("../shared is absent (only the project machines have it)")
    return SHARED
