"""Shared test fixtures. Real CT data is found through $NPUNET_DATA (default: ../shared/data beside the
repository); tests that need it skip with a clear reason when it is absent, and .ci/run makes that an error.
Tests import the tools package (tools.train, tools.cv, ...) from the repository root, which pyproject.toml's
pytest setting `pythonpath = ["."]` puts on sys.path."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

DATA_DIR = Path(os.environ.get("NPUNET_DATA", REPO.parent / "shared" / "data"))


def data_available() -> bool:
    return (DATA_DIR / "dataset.json").is_file()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not data_available():
        if os.environ.get("NPUNET_REQUIRE_DATA"):
            pytest.fail(f"NPUNET_REQUIRE_DATA is set but no real CT data at {DATA_DIR}")
        pytest.skip(f"real CT data not found at {DATA_DIR} (set NPUNET_DATA to the FLARE-layout data folder)")
    return DATA_DIR
