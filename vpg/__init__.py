"""vpg: CLIP-based visual prompting and grounding on one hookable CLIP core."""

__version__ = "0.1.0"
