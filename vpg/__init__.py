"""vpg: CLIP-based visual prompting and grounding on one hookable CLIP core."""

__version__ = "0.1.0"

# Import every method, DataModule and callback so LightningCLI class paths and checkpoints
# resolve without the user importing anything by hand.
from vpg import callbacks, clip, data, methods  # noqa: E402,F401
from vpg.data import datamodules  # noqa: E402,F401
