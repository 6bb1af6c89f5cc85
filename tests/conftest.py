import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_runs(tmp_path_factory):
    """Tests record results into a temp folder, never into the user's runs/."""
    os.environ["MOKIT_RUNS"] = str(tmp_path_factory.mktemp("runs"))
    os.environ["MOKIT_PROGRESS"] = "0"
    yield


@pytest.fixture
def standin(monkeypatch):
    """Force the generated stand-in datasets."""
    monkeypatch.setenv("MOKIT_STANDIN", "1")
