"""The small class-conditional Fashion-MNIST pipeline shipped with vqldm (the embedded default)."""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent
