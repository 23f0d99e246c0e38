"""The streaming data path: the folder index (decode once, stat afterwards, changes re-checked), training
batches decoded by DataLoader workers (bit-exact resume, the same pixels on 1 or 2 processes, random crop
and flip as functions of seed/epoch/image), Hugging Face datasets read offline, memory-mapped caches, and
a stage-2 start on an existing cache that decodes no image."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

import vqldm.data.loading as loading_module
import vqldm.data.splits as data_module
import vqldm.data.folder_index as index_module
from vqldm.cli.main import main
from vqldm.data.loading import BatchSampler, train_batches
from vqldm.data.config import DataConfig
from vqldm.data.sources import load_datasets
from vqldm.plumbing.errors import UserError
from vqldm.data.folder_index import index_folder


def _colour_folder(root, n=24, size=(20, 24), labelled=False, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = root / (f"class{i % 2}" if labelled else f"part{i % 3}")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(sub / f"{i:03d}.png")
    return root


class DecodeCounter:
    """Counts image decodes in this process: the folder index's checks and the loaders' reads."""

    def __init__(self, monkeypatch):
        self.probes = self.reads = 0
        probe, read = index_module.probe_image, data_module.load_image

        def counting_probe(*a, **k):
            self.probes += 1
            return probe(*a, **k)

        def counting_read(*a, **k):
            self.reads += 1
            return read(*a, **k)

        monkeypatch.setattr(index_module, "probe_image", counting_probe)
        monkeypatch.setattr(data_module, "load_image", counting_read)


def test_folder_index_decodes_once_and_sees_changes(tmp_path, monkeypatch):
    root = _colour_folder(tmp_path / "imgs", n=10)
    (root / "part0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    counter = DecodeCounter(monkeypatch)
    first = index_folder(root, progress=False)
    assert first.decoded == 11 and counter.probes == 11
    assert len(first.usable) == 10 and [s.path for s in first.skipped] == ["part0/broken.png"]
    assert first.entries["part1/001.png"].to_row()[3:] == [20, 24, 3]  # height, width, colour
    # a restart on the unchanged folder decodes nothing
    again = index_folder(root, progress=False)
    assert again.decoded == 0 and counter.probes == 11 and again.usable == first.usable
    # a changed file (new size/mtime) is checked again, a removed one is dropped, a new one added
    Image.new("L", (5, 7), 9).save(root / "part1" / "001.png")
    (root / "part2" / "002.png").unlink()
    Image.new("RGB", (6, 6)).save(root / "part2" / "new.png")
    changed = index_folder(root, progress=False)
    assert changed.decoded == 2 and counter.probes == 13
    assert changed.entries["part1/001.png"].to_row()[3:] == [7, 5, 1]
    assert "part2/002.png" not in changed.entries and "part2/new.png" in changed.usable
    # loading the datasets from an indexed folder decodes no image (reads happen when batches are drawn)
    ds = load_datasets(str(root), DataConfig(image_size=16, channels=3, fit="crop"), log=lambda m: None, progress=False)
    assert counter.probes == 13 and counter.reads == 0 and len(ds.train) + len(ds.holdout) == 10


def test_unwritable_cache_warns_and_still_works(tmp_path, monkeypatch):
    root = _colour_folder(tmp_path / "imgs", n=4)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("VQLDM_CACHE_DIR", str(blocker))
    logs = []
    index = index_folder(root, log=logs.append, progress=False)
    assert len(index.usable) == 4 and len(logs) == 1 and "VQLDM_CACHE_DIR" in logs[0]


def _collect(split, cfg, steps, start=0, rank=0, world=1, batch=4, seed=3):
    sampler = BatchSampler(len(split), batch, seed, rank, world)
    it = train_batches(split, sampler, start, cfg, seed)
    out = [next(it) for _ in range(steps - start)]
    it.close()
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_resume_and_processes_bit_exact(tmp_path, workers):
    root = _colour_folder(tmp_path / "imgs", n=24)
    cfg = DataConfig(image_size=16, channels=3, fit="crop", holdout_fraction=0.0, num_workers=workers,
                     random_crop=True, random_flip=True)
    ds = load_datasets(str(root), cfg, log=lambda m: None, progress=False)
    full = _collect(ds.train, cfg, 9)  # 24 images, batch 4: 6 steps per epoch, so 1.5 epochs
    resumed = _collect(ds.train, cfg, 9, start=5)
    for (x, y), (xr, yr) in zip(full[5:], resumed):
        assert torch.equal(x, xr) and torch.equal(y, yr)
    # 2 processes of 2 images each see, together, the images of 1 process of 4
    rank0 = _collect(ds.train, cfg, 9, rank=0, world=2, batch=2)
    rank1 = _collect(ds.train, cfg, 9, rank=1, world=2, batch=2)
    for (x, _), (a, _), (b, _) in zip(full, rank0, rank1):
        assert torch.equal(x, torch.cat([a, b]))
    # the crops and flips are real: the views differ from the centred, unflipped reads, and between epochs
    plain = DataConfig(image_size=16, channels=3, fit="crop", holdout_fraction=0.0, num_workers=workers)
    centred = _collect(ds.train, plain, 9)
    assert sum(not torch.equal(x, c) for (x, _), (c, _) in zip(full, centred)) >= 8
    # ... and an image's view is drawn anew each epoch
    views = loading_module.AugmentedViews(ds.train, 3, crop=True, flip=True)
    assert sum(not torch.equal(views[(i, 0)][0], views[(i, 1)][0]) for i in range(len(ds.train))) >= 12
    assert all(torch.equal(views[(i, 4)][0], views[(i, 4)][0]) for i in range(3))


def test_folder_that_changes_during_training_is_one_line(tmp_path):
    root = _colour_folder(tmp_path / "imgs", n=6)
    cfg = DataConfig(image_size=16, channels=3, fit="crop", holdout_fraction=0.0, num_workers=0)
    ds = load_datasets(str(root), cfg, log=lambda m: None, progress=False)
    (root / ds.train.files[0]).write_bytes(b"")
    with pytest.raises(UserError, match="changed after the folder was indexed: run again to re-index"):
        ds.train.batch([0])


# ----------------------------------------------------------------------------- Hugging Face datasets
def _hf_images(n, seed):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture()
def hf_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-home" / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")  # a dependency of vqldm: present wherever vqldm is installed
    return datasets


def test_hf_dataset_saved_to_disk(tmp_path, hf_offline):
    hf = hf_offline
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["cat", "dog"])})
    train_images, test_images = _hf_images(10, 0), _hf_images(4, 1)
    dd = hf.DatasetDict({
        "train": hf.Dataset.from_dict({"image": train_images, "label": [i % 2 for i in range(10)]}, features=features),
        "test": hf.Dataset.from_dict({"image": test_images, "label": [1, 0, 1, 0]}, features=features),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(image_size=12, channels=3)
    ds = load_datasets(f"hf:{tmp_path / 'saved'}", cfg, log=lambda m: None, progress=False)
    assert len(ds.train) == 10 and len(ds.holdout) == 4 and ds.train.class_names == ["cat", "dog"]
    assert ds.train.labels.tolist() == [i % 2 for i in range(10)] and ds.holdout.labels.tolist() == [1, 0, 1, 0]
    x, _ = ds.holdout.batch([2])
    expected = torch.from_numpy(np.array(test_images[2])).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(x[0], expected)  # PNG bytes in Arrow: lossless
    # decoding in workers, through the training loader
    sampler = BatchSampler(len(ds.train), 5, 0)
    got = list(zip(range(2), train_batches(ds.train, sampler, 0, DataConfig(image_size=12, channels=3, num_workers=2), 0)))
    assert got[1][1][0].shape == (5, 3, 12, 12)


def test_hf_dataset_from_data_files_and_cli(tmp_path, hf_offline, capsys):
    """A folder of parquet files goes through ``datasets.load_dataset``, the path Hub datasets take."""
    hf = hf_offline
    features = hf.Features({"img": hf.Image(), "kind": hf.ClassLabel(names=["a", "b", "c"])})
    ds = hf.Dataset.from_dict({"img": _hf_images(40, 2), "kind": [i % 3 for i in range(40)]}, features=features)
    (tmp_path / "pq" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "pq" / "data" / "train-00000.parquet"))
    cfg = DataConfig(image_size=16, channels=1, fit="pad", holdout_fraction=0.25)
    loaded = load_datasets(f"hf:{tmp_path / 'pq'}", cfg, log=lambda m: None, progress=False)
    assert len(loaded.train) + len(loaded.holdout) == 40 and 0 < len(loaded.holdout) < 20
    assert loaded.train.class_names == ["a", "b", "c"] and loaded.source == f"hf:{tmp_path / 'pq'}"
    assert loaded.train.batch([0])[0].shape == (1, 1, 16, 16)
    # --config auto reads its rows and image headers too
    from vqldm.data.summary import describe_data

    summary = describe_data(f"hf:{tmp_path / 'pq'}")
    assert (summary.kind, summary.count, summary.channels, summary.median_hw) == ("hf", 40, 3, (12, 12))
    assert summary.class_names == ["a", "b", "c"] and summary.num_classes == 3
    # the same dataset trains an autoencoder from the CLI
    out = tmp_path / "ae"
    rc = main(["train-autoencoder", "--config", "tiny", "--data", f"hf:{tmp_path / 'pq'}", "--out", str(out),
               "--max-steps", "2", "--set", "train.progress=false", "--set", "data.num_workers=1"])
    assert rc == 0 and (out / "vqvae" / "config.json").is_file()
    # a dataset that cannot be loaded is one line, exit 2
    capsys.readouterr()
    rc = main(["train-autoencoder", "--config", "tiny", "--data", f"hf:{tmp_path / 'nothing-here'}", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "could not load the Hugging Face dataset" in err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- stage 2 on an existing cache
def test_stage2_on_existing_cache_decodes_no_image(tmp_path, monkeypatch):
    root = _colour_folder(tmp_path / "imgs", n=24, size=(16, 16), labelled=True)
    ae = tmp_path / "ae"
    common = ["--set", "train.progress=false", "--set", "data.num_workers=0"]
    assert main(["train-autoencoder", "--config", "tiny", "--data", str(root), "--labels", "folders", "--out", str(ae),
                 "--max-steps", "2", "--set", "data.channels=3", *common]) == 0
    counter = DecodeCounter(monkeypatch)

    def train(out):
        return main(["train-diffusion", "--config", "tiny", "--autoencoder", str(ae), "--data", str(root), "--labels", "folders",
                     "--out", str(tmp_path / out), "--max-steps", "2", "--set", "train.image_every=1000", *common])

    assert train("d1") == 0
    # the index was reused; the cache read every image once (24 to train + the 1 held out, shared in so small a folder)
    assert counter.probes == 0 and counter.reads == 25
    assert train("d2") == 0
    assert counter.probes == 0 and counter.reads == 25  # the second run found the cache: no image decoded
    caches = list((ae / "latent_cache").iterdir())
    assert len(caches) == 1 and (caches[0] / "train.safetensors").is_file()
