"""Shared fixtures: tiny data and a tiny trained autoencoder, built once per test session.

The fast lane: ``python -m pytest -q -m "not slow"`` runs every stage (training, resume, pipelines, priors,
evaluation, data, CLI errors) in about two minutes on 2 cores, for a developer's inner loop. It leaves out
the tests marked ``slow`` (registered in pyproject.toml): those that build a wheel, start torchrun or
several processes, run 256 px end to end, the GPU check's CPU run, the SIGKILL loop and the longest
end-to-end trainings (``python -m pytest -m slow --co -q`` lists them; ``-m slow`` runs only them).
``python -m pytest -q`` (the README's command, and ``.ci/run``) still runs everything. Mark a new test
``@pytest.mark.slow`` when it is of one of those kinds or takes more than a few seconds on its own.
The SIGKILL test prints its random seed; ``VQLDM_TEST_SEED=N`` replays it.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

# The folder indexes that runs leave in vqldm's cache go to a folder of this session, not ~/.cache
# (subprocesses inherit it).
os.environ["VQLDM_CACHE_DIR"] = tempfile.mkdtemp(prefix="vqldm-test-cache-")

# One thread: two OpenMP threads spinning against each other on a busy 2-core machine run ~20x slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A labelled folder: 2 classes x 12 RGB PNGs of 20x20 (class 0 dark squares, class 1 bright discs)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:20, :20]
    for label, name in enumerate(["squares", "discs"]):
        (root / name).mkdir()
        for i in range(12):
            img = rng.integers(0, 40, (20, 20, 3), dtype=np.uint8)
            if label == 0:
                img[5:15, 5:15] = 200
            else:
                img[(yy - 10) ** 2 + (xx - 10) ** 2 < 36] = 255
            Image.fromarray(img).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_ae_run(tmp_path_factory):
    """A tiny autoencoder trained for 20 steps on 256 Fashion-MNIST images; returns the run folder."""
    from vqldm.autoencoder.config import load_autoencoder_config
    from vqldm.autoencoder.train import train_autoencoder

    out = tmp_path_factory.mktemp("tiny_ae")
    cfg = load_autoencoder_config("tiny", ["data.max_images=256", "train.eval_max_images=64", "train.progress=false"])
    train_autoencoder(cfg, out, data="fashion-mnist")
    return out
