"""A Hugging Face dataset read as a stream (``data.streaming``): every image once per epoch, the same set
as the downloaded dataset; a resumed run sees exactly the uninterrupted run's batches (workers, crops and
flips included); two processes read disjoint images; held-out images in memory; train-autoencoder from
the CLI; bad inputs are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vqldm.cli.main import main
from vqldm.data.config import DataConfig
from vqldm.data.sources import load_datasets
from vqldm.data.streaming import StreamedSplit
from vqldm.plumbing.errors import UserError


@pytest.fixture()
def hf(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-home" / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    # datasets waits 5 s after each pass over shuffled parquet shards (a pyarrow shutdown workaround): not worth it here
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    return datasets


def _images(n, seed, size=(12, 12)):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def _saved(hf, root, n_train, n_test=0, size=(12, 12)):
    """A save_to_disk folder: train (and test) splits with an Image and a ClassLabel column."""
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["a", "b", "c"])})
    splits = {"train": hf.Dataset.from_dict({"image": _images(n_train, 0, size), "label": [i % 3 for i in range(n_train)]}, features=features)}
    if n_test:
        splits["test"] = hf.Dataset.from_dict({"image": _images(n_test, 1, size), "label": [i % 3 for i in range(n_test)]}, features=features)
    hf.DatasetDict(splits).save_to_disk(str(root))
    return root


def _parquet(hf, root, n, files, size=(12, 12), row_group=None):
    """A folder of parquet files (the layout of a Hub dataset), train split only; ``row_group`` rows per
    parquet row group (streamed as shards of their own where a file is shared by several workers)."""
    features = hf.Features({"img": hf.Image(), "kind": hf.ClassLabel(names=["x", "y"])})
    ds = hf.Dataset.from_dict({"img": _images(n, 2, size), "kind": [i % 2 for i in range(n)]}, features=features)
    (root / "data").mkdir(parents=True)
    bounds = np.linspace(0, n, files + 1).astype(int)
    for f in range(files):
        ds.select(range(bounds[f], bounds[f + 1])).to_parquet(str(root / "data" / f"train-{f:05d}-of-{files:05d}.parquet"),
                                                              batch_size=row_group or 1000)
    return root


def _collect(split, cfg, steps, start=0, rank=0, world=1, batch=4, seed=3):
    sampler = split.batch_sampler(batch, seed, rank, world)
    it = split.train_batches(sampler, start, cfg, seed)
    out = [next(it) for _ in range(steps - start)]
    it.close()
    return out, sampler


def _keys(batches) -> list[bytes]:
    return [x.numpy().tobytes() for b, _ in batches for x in b]


@pytest.mark.parametrize("workers", [0, 2])
def test_every_image_once_per_epoch_as_the_downloaded_dataset(tmp_path, hf, workers):
    root = _saved(hf, tmp_path / "saved", 24, 5)
    cfg = DataConfig(image_size=12, channels=3, streaming=True, num_workers=workers)
    ds = load_datasets(f"hf:{root}", cfg, log=lambda m: None, progress=False)
    assert isinstance(ds.train, StreamedSplit) and len(ds.train) == 24 and ds.train.class_names == ["a", "b", "c"]
    assert len(ds.holdout) == 5 and ds.holdout.labels.tolist() == [0, 1, 2, 0, 1]  # the test split, in memory
    downloaded = load_datasets(f"hf:{root}", DataConfig(image_size=12, channels=3), log=lambda m: None, progress=False)
    assert torch.equal(ds.holdout.batch([0, 1, 2, 3, 4])[0], downloaded.holdout.batch([0, 1, 2, 3, 4])[0])
    every = sorted(x.numpy().tobytes() for x in downloaded.train.batch(list(range(24)))[0])
    batches, sampler = _collect(ds.train, cfg, 12)  # 24 images, batch 4: two epochs of 6 steps
    assert sampler.steps_per_epoch == 6 and all(x.shape == (4, 3, 12, 12) for x, _ in batches)
    epochs = [_keys(batches[:6]), _keys(batches[6:])]
    assert sorted(epochs[0]) == every and sorted(epochs[1]) == every  # every image once, no duplicate
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    # labels travel with their images
    label_of = {x.numpy().tobytes(): int(y) for x, y in zip(*downloaded.train.batch(list(range(24))))}
    assert all(label_of[x.numpy().tobytes()] == int(y) for b, ys in batches for x, y in zip(b, ys))
    # the stream's own order (scaling factor, ...) reads every image once, centred, as float batches
    natural = list(ds.train.batches(5))
    assert [len(y) for _, y in natural] == [5, 5, 5, 5, 4] and sorted(_keys(natural)) == every


@pytest.mark.parametrize("kind, workers", [("saved", 0), ("saved", 2), ("parquet", 2)])
def test_resume_sees_the_uninterrupted_batches(tmp_path, hf, kind, workers):
    """No test split: held-out rows are taken out of the stream, so the workers' shares are uneven (one
    parquet file of 5 row groups: 3 for one worker, 2 for the other)."""
    if kind == "saved":
        root = _saved(hf, tmp_path / "saved", 30, size=(14, 17))
    else:
        root = _parquet(hf, tmp_path / "pq", 30, 1, size=(14, 17), row_group=6)
    cfg = DataConfig(image_size=12, channels=3, fit="crop", streaming=True, num_workers=workers, holdout_fraction=0.2,
                     random_crop=True, random_flip=True)
    ds = load_datasets(f"hf:{root}", cfg, log=lambda m: None, progress=False)
    assert len(ds.train) == 24 and len(ds.holdout) == 6 and len(ds.train.exclude) == 6
    full, sampler = _collect(ds.train, cfg, 15)  # 6 steps per epoch: 2.5 epochs
    assert sampler.steps_per_epoch == 6
    held = {x.numpy().tobytes() for x in ds.holdout.batch(list(range(6)))[0]}
    assert not held & set(_keys(full))  # ... and never trained on (crops aside: compared centred below)
    for start in (1, 5, 6, 9, 14):
        resumed, _ = _collect(ds.train, cfg, 15, start=start)
        assert all(torch.equal(a, b) and torch.equal(ya, yb) for (a, ya), (b, yb) in zip(full[start:], resumed)), start
    # crops and flips are real, drawn anew each epoch
    plain = DataConfig(image_size=12, channels=3, fit="crop", streaming=True, num_workers=workers, holdout_fraction=0.2)
    centred, _ = _collect(ds.train, plain, 12)
    assert sum(not torch.equal(a, c) for (a, _), (c, _) in zip(full, centred)) >= 8
    assert not held & set(_keys(centred))


def test_two_processes_read_disjoint_images(tmp_path, hf):
    # 3 parquet files: not divisible by 2 processes, so datasets gives each process every other row;
    # 4 files: two whole files each
    for files in (3, 4):
        root = _parquet(hf, tmp_path / f"pq{files}", 32, files)
        cfg = DataConfig(image_size=12, channels=3, streaming=True, num_workers=1, holdout_fraction=0.0)
        ds = load_datasets(f"hf:{root}", cfg, log=lambda m: None, progress=False)
        assert len(ds.train) == 32 and ds.train.class_names == ["x", "y"]
        rank0, sampler = _collect(ds.train, cfg, 4, rank=0, world=2)
        rank1, _ = _collect(ds.train, cfg, 4, rank=1, world=2)
        assert sampler.steps_per_epoch == 4
        a, b = _keys(rank0), _keys(rank1)
        assert len(set(a)) == 16 and len(set(b)) == 16 and not set(a) & set(b), files


def test_max_images_and_random_access(tmp_path, hf):
    root = _saved(hf, tmp_path / "saved", 20, 3)
    cfg = DataConfig(image_size=12, channels=3, streaming=True, num_workers=0, max_images=8)
    ds = load_datasets(f"hf:{root}", cfg, log=lambda m: None, progress=False)
    assert len(ds.train) == 8 and len(list(ds.train.batches(3))) == 3
    with pytest.raises(UserError, match="drop data.streaming"):
        ds.train.batch([0])
    with pytest.raises(UserError, match="latent cache"):
        ds.train.fingerprint()


def test_bad_inputs_are_one_line(tmp_path, hf, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _images(1, 0)[0].save(folder / "a.png")
    for source in (str(folder), "fashion-mnist"):
        with pytest.raises(UserError, match="data.streaming reads Hugging Face datasets"):
            load_datasets(source, DataConfig(streaming=True), log=lambda m: None, progress=False)
    # a stream without an Image column
    (tmp_path / "text" / "data").mkdir(parents=True)
    hf.Dataset.from_dict({"text": ["a", "b"], "n": [1, 2]}).to_parquet(str(tmp_path / "text" / "data" / "train.parquet"))
    capsys.readouterr()
    rc = main(["train-autoencoder", "--config", "tiny", "--data", f"hf:{tmp_path / 'text'}", "--out", str(tmp_path / "x"),
               "--set", "data.streaming=true"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "has no Image column" in err
    assert not (tmp_path / "x").exists()
    # stage 2 needs the images downloaded
    from vqldm.latents.setup import LatentDataConfig, resolve_latent_data

    with pytest.raises(UserError, match="latent cache, which needs the dataset downloaded"):
        resolve_latent_data(LatentDataConfig(streaming=True), {"image_size": 12, "channels": 3, "fit": "pad"}, None)


def test_a_broken_row_is_one_line(tmp_path, hf):
    features = hf.Features({"image": hf.Image()})
    rows = [{"bytes": im_bytes, "path": None} for im_bytes in [b"not an image"] * 2]
    good = _images(6, 0)
    hf.Dataset.from_dict({"image": good + rows}, features=features).save_to_disk(str(tmp_path / "broken"))
    cfg = DataConfig(image_size=12, channels=3, streaming=True, num_workers=2, holdout_fraction=0.0)
    ds = load_datasets(f"hf:{tmp_path / 'broken'}", cfg, log=lambda m: None, progress=False)
    with pytest.raises(UserError, match="is not a usable image") as err:
        _collect(ds.train, cfg, 2)
    assert len(str(err.value).splitlines()) == 1 and "Traceback" not in str(err.value)


def test_describe_a_stream_for_config_auto(tmp_path, hf):
    from vqldm.data.summary import describe_data

    root = _parquet(hf, tmp_path / "pq", 20, 2, size=(12, 16))
    summary = describe_data(f"hf:{root}", streaming=True)
    assert (summary.kind, summary.count, summary.channels, summary.median_hw) == ("hf", 20, 3, (12, 16))
    assert summary.class_names == ["x", "y"]


def test_train_autoencoder_streams_and_resumes_from_the_cli(tmp_path, hf):
    root = _parquet(hf, tmp_path / "pq", 40, 2)
    out = tmp_path / "ae"
    args = ["train-autoencoder", "--config", "tiny", "--data", f"hf:{root}", "--out", str(out), "--set", "data.streaming=true",
            "--set", "train.progress=false", "--set", "data.num_workers=1", "--set", "data.image_size=12",
            "--set", "train.checkpoint_every=2"]
    assert main(args + ["--max-steps", "2"]) == 0
    assert (out / "vqvae" / "config.json").is_file()
    assert main(args + ["--max-steps", "4", "--resume"]) == 0
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_images"] == 38 and metrics["holdout"]["images"] == 2  # 5% of 40 held out


def test_config_auto_describes_the_stream_when_the_overrides_ask_for_it(tmp_path, hf, monkeypatch):
    import vqldm.cli.main as cli
    import vqldm.data.summary as summary_module

    root = _parquet(hf, tmp_path / "pq", 20, 2)
    seen = {}
    real = summary_module.describe_data

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)  # the description is all this test needs

    monkeypatch.setattr(summary_module, "describe_data", spy)
    with pytest.raises(SystemExit):
        cli.main(["train-autoencoder", "--config", "auto", "--data", f"hf:{root}", "--set", "data.streaming=true",
                  "--out", str(tmp_path / "run")])
    assert seen == {"streaming": True}
    assert real is not spy


def test_streaming_with_shards_or_a_folder_is_one_line(tmp_path, capsys):
    from vqldm.cli.main import main

    for data in ("shards:" + str(tmp_path), str(tmp_path)):
        code = main(["train-autoencoder", "--config", "tiny", "--data", data, "--set", "data.streaming=true",
                     "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "data.streaming reads Hugging Face datasets" in err[0]
