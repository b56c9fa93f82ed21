import pytest


@pytest.fixture(scope="session")
def shapes_cache(tmp_path_factory):
    """One vpg-shapes cache for the whole session (generation is deterministic)."""
    import os

    path = tmp_path_factory.mktemp("vpg-cache")
    os.environ["VPG_CACHE"] = str(path)
    return path
