import os

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped, here once for all, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """The tiny preset checkpoint, made once per session."""
    import prospect_core

    return prospect_core.make_model(tmp_path_factory.mktemp("tiny_model"), "tiny")


@pytest.fixture(scope="module")
def engine(tiny_model):
    """The tiny checkpoint loaded once per test module (a server test's server holds it)."""
    from prospect_core.engine import Engine

    return Engine(tiny_model)
