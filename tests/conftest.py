import os

# Nothing in the test suite may touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip():
    """A 2-block random vpg-tiny CLIP (32 px, patch 8 -> 4x4 grid), built in milliseconds."""
    from vpg.clip import create_model

    torch.manual_seed(0)
    return create_model("vpg-tiny").eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from vpg.clip import get_tokenizer

    return get_tokenizer("vpg-tiny")
