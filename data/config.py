"""The ``data`` section of a run config: where images come from and how they are brought to the model's size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DataConfig:
    """Where images come from and how they are brought to the model's size."""

    source: str | None = None  # folder path or named dataset; the CLI's --data overrides it
    image_size: int = 32
    channels: int = 1  # 1 = grayscale, 3 = RGB
    fit: Literal["pad", "resize", "crop"] = "pad"  # pad/crop to size (centered), or resize shorter side + center crop
    labels: Literal["none", "folders"] = "none"  # class labels from first-level subfolders of an image folder
    holdout_fraction: float = 0.05  # image folders only; named datasets use their official test split
    max_images: int | None = None  # use at most this many training images (quick runs)
    num_workers: int | None = None  # decoding processes for folders and hf: datasets (None: cores - 1, at most 8)
    random_crop: bool = False  # training: crop at a random place instead of the centre (fit resize/crop, non-square images)
    random_flip: bool = False  # training: mirror each image left-right with probability 1/2
    hf_config: str | None = None  # --data hf:NAME: the dataset's configuration (subset) name, where it has several
    streaming: bool = False  # --data hf:NAME: read the dataset as a stream instead of downloading it first (data/streaming.py)
    stream_holdout_images: int = 2000  # streaming: held-out images read into memory (the test split's first N, else N train rows)
    captions: bool = False  # read a caption per image (text-to-image; data/captions.py): every image must have one
    caption_column: str | None = None  # --data hf:NAME: the captions' column (None: the first of text, caption, captions, prompt)

    def __post_init__(self):
        # None (image_size, channels) is allowed only by LatentDataConfig: "take it from the autoencoder"
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"data.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.stream_holdout_images < 1:
            raise ValueError(f"data.stream_holdout_images must be >= 1, got {self.stream_holdout_images}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 (or null for automatic), got {self.num_workers}")
