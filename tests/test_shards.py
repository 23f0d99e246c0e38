"""Tar shards (``--data shards:...``): brace patterns, ``vqldm shard`` round trip (labels, captions, a corrupt
file), foreign webdataset shards (decode check, samples without an image), reading over file:// and
HTTP range requests, the shard-aware batch order (2 ranks on disjoint shards covering the epoch, resume
from any step), both stages and the code cache on shards, ``--config auto``, and bad inputs as one-line errors."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqldm.cli.main import main
from vqldm.data.config import DataConfig
from vqldm.data.loading import train_batches
from vqldm.data.shards import ShardBatchSampler, expand_braces, index_shards, shard_locations
from vqldm.data.sources import load_datasets
from vqldm.data.summary import describe_data
from vqldm.plumbing.errors import UserError

CFG = dict(image_size=16, channels=3, fit="resize", num_workers=0)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def image_folder(root: Path, n: int = 12) -> Path:
    """``n`` RGB images in two class folders, captions for some (a .txt beside the image, metadata.jsonl
    lines), and one corrupt file."""
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = ("cats", "dogs")[i % 2]
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (18 + i % 3, 20, 3), dtype=np.uint8)).save(root / cls / f"im{i:02d}.png")
    (root / "cats" / "im00.txt").write_text("a cat\n")
    (root / "dogs" / "metadata.jsonl").write_text(json.dumps({"file_name": "im01.png", "text": "a dog"}) + "\n")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def shard(folder, out, *extra) -> int:
    return main(["shard", str(folder), str(out), "--no-progress", *extra])


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def pixels(split) -> list[bytes]:
    return sorted(split[i][0].numpy().tobytes() + bytes([int(split.labels[i]) % 256]) for i in range(len(split)))


def one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vqldm: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A folder and its shards (labels, 3 images a shard)."""
    root = tmp_path_factory.mktemp("shards")
    folder = image_folder(root / "images")
    assert shard(folder, root / "out", "--labels", "folders", "--shard-size", "3") == 0
    return folder, root / "out"


# ----------------------------------------------------------------------------- patterns
def test_brace_expansion():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("a-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar"]  # no leading zero: no padding
    assert expand_braces("{2..0}") == ["2", "1", "0"]
    assert expand_braces("{train,val}-{0..1}") == ["train-0", "train-1", "val-0", "val-1"]
    assert expand_braces("x{a,b{c,d}}") == ["xa", "xbc", "xbd"]
    assert expand_braces("{x}.tar") == ["{x}.tar"] and expand_braces("plain.tar") == ["plain.tar"]
    for bad in ("a-{0..3.tar", "a-0..3}.tar", "{0..99999999}"):
        with pytest.raises(UserError):
            expand_braces(bad)


def test_sample_keys_end_at_the_first_dot_and_are_unique():
    from vqldm.data.shards import _sample_keys

    keys = _sample_keys(["a/x.png", "a/x.jpg", "a/x.v2.png", "a/x_v2.png", "b.c/y.png"])
    assert keys == {"a/x.jpg": "a/x", "a/x.png": "a/x_2", "a/x.v2.png": "a/x_v2", "a/x_v2.png": "a/x_v2_2", "b.c/y.png": "b.c/y"}


def test_shard_locations(sharded, tmp_path):
    _, out = sharded
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == [f"shard-{i:06d}.tar" for i in range(4)]  # 12 images, 3 a shard
    assert [Path(p).name for p in shard_locations(str(out))] == names
    assert [Path(p).name for p in shard_locations(f"{out}/shard-{{000001..000002}}.tar")] == names[1:3]
    assert [Path(p).name for p in shard_locations(f"{out}/*.tar")] == names


# ----------------------------------------------------------------------------- vqldm shard
def test_shard_round_trip(sharded, tmp_path, capsys):
    folder, out = sharded
    index = json.loads((out / "shards.json").read_text())
    assert index["class_names"] == ["cats", "dogs"] and index["images"] == 12
    assert index["skipped"] == [["dogs/broken.png", "not an image"]]  # captions and metadata.jsonl are not "skipped"
    with tarfile.open(out / "shard-000000.tar") as tf:
        names = tf.getnames()
    assert all(n.endswith((".png", ".cls", ".txt")) for n in names)
    # the original bytes, not re-encoded
    row = index["shards"][0]["samples"][0]
    key, ext, offset, size = row[:4]
    original = folder / f"{key}.{ext}"
    assert (out / "shard-000000.tar").read_bytes()[offset : offset + size] == original.read_bytes()

    # the same images, labels and held-out split as the folder itself
    cfg = DataConfig(**CFG, labels="folders", holdout_fraction=0.4)  # 4 of the 12 held out by their hash
    from_folder, from_shards = load_datasets(str(folder), cfg, log=lambda _: None), load_datasets(f"shards:{out}", cfg)
    assert from_shards.source == f"shards:{out}" and from_shards.train.class_names == ["cats", "dogs"]
    for part in ("train", "holdout"):
        assert pixels(getattr(from_folder, part)) == pixels(getattr(from_shards, part))
    captions = {row[0]: row[5] for s in index["shards"] for row in s["samples"] if row[5]}  # read with data.captions only
    assert captions == {"cats/im00": "a cat", "dogs/im01": "a dog"} and from_shards.train.captions is None

    # a refusal for a non-empty OUT; the same bytes when written again
    assert "not empty" in one_line_error(capsys, ["shard", str(folder), str(out), "--no-progress"])
    assert shard(folder, tmp_path / "again", "--labels", "folders", "--shard-size", "3") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("wrote 12 images (2 classes, 2 captions) as 4 shards") and "1 file skipped" in line
    assert all((tmp_path / "again" / p.name).read_bytes() == p.read_bytes() for p in out.glob("*.tar"))


def test_scanned_shards_match_the_index_file_also_over_file_urls(sharded, tmp_path):
    """Without shards.json the shards are scanned (and decode-checked): the same samples; class names are the numbers."""
    _, out = sharded
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in out.glob("*.tar"):
        shutil.copy(p, bare / p.name)
    cfg = DataConfig(**CFG, labels="folders")
    indexed = load_datasets(f"shards:{out}", cfg)
    for spec in (str(bare), f"file://{bare}/shard-{{000000..000003}}.tar"):
        scanned = load_datasets(f"shards:{spec}", cfg)
        assert scanned.train.class_names == ["0", "1"]
        assert pixels(scanned.train) == pixels(indexed.train) and pixels(scanned.holdout) == pixels(indexed.holdout)
    none = load_datasets(f"shards:{bare}", DataConfig(**CFG))
    assert (none.train.labels == -1).all() and none.train.class_names == []


def test_foreign_shard_skips_corrupt_images_and_samples_without_one(tmp_path):
    rng = np.random.default_rng(1)
    good = [png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    write_tar(tmp_path / "a.tar", [("s0.jpg.json", b"{}"), ("s0.png", good[0]), ("s0.cls", b"1"), ("s0.txt", b"zero"),
                                   ("s1.png", good[1][:60]), ("s1.cls", b"0"),  # truncated image
                                   ("s2.cls", b"0"), ("s2.txt", b"no image")])
    write_tar(tmp_path / "b.tar", [(f"d/s{i}.PNG", good[i]) for i in (2, 3)])
    messages = []
    ds = load_datasets(f"shards:{tmp_path}", DataConfig(**CFG, holdout_fraction=0.0), log=messages.append)
    assert len(ds.train) == 3 and sorted(ds.train.keys) == ["d/s2", "d/s3", "s0"]
    assert {row[0]: row[5] for rec in index_shards(str(tmp_path)).records for row in rec.rows}["s0"] == "zero"
    assert len(ds.skipped) == 2 and any("truncated" in s.reason for s in ds.skipped)
    assert messages and messages[0].startswith("warning: skipped 2 of 5 samples")


def test_http_shards_are_read_with_range_requests(sharded, tmp_path):
    _, out = sharded

    class RangeHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_head(self):
            spec = self.headers.get("Range")
            path = Path(self.translate_path(self.path))
            if not spec or not path.is_file():
                return super().send_head()
            data = path.read_bytes()
            start, end = (int(v) for v in spec.split("=")[1].split("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            return io.BytesIO(data[start : end + 1])

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shard-{{000000..000003}}.tar"
        cfg = DataConfig(**CFG, labels="folders")
        remote, local = load_datasets(f"shards:{url}", cfg), load_datasets(f"shards:{out}", cfg)
        assert remote.train.class_names == ["cats", "dogs"]  # shards.json read from beside the shards
        assert pixels(remote.train) == pixels(local.train)
        with pytest.raises(UserError, match="HTTP 404"):
            load_datasets(f"shards:http://127.0.0.1:{server.server_address[1]}/nope-{{0..1}}.tar", cfg)
    finally:
        server.shutdown()
        server.server_close()


def test_describe_data_for_config_auto(sharded):
    _, out = sharded
    summary = describe_data(f"shards:{out}")
    assert summary.kind == "shards" and summary.count == 12 and summary.channels == 3
    assert summary.median_hw == (19, 20) and summary.class_names == ["cats", "dogs"]
    assert describe_data(f"shards:{out}", "none").num_classes == 0


# ----------------------------------------------------------------------------- batch order
def test_two_ranks_read_disjoint_shards_and_cover_the_epoch():
    sample_shard = np.repeat(np.arange(6), 8)  # 6 shards of 8 samples
    ranks = [ShardBatchSampler(sample_shard, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == 6
    owners_seen = set()
    for epoch in range(4):
        assert np.array_equal(ranks[0].shard_owners(epoch), ranks[1].shard_owners(epoch))  # both ranks agree
        owners_seen.add(tuple(ranks[0].shard_owners(epoch)))
        orders = [r.epoch_order(epoch) for r in ranks]
        shards = [set(sample_shard[o].tolist()) for o in orders]
        assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 3  # disjoint, balanced
        both = np.concatenate(orders)
        assert sorted(both.tolist()) == list(range(48))  # together: every sample once
    assert len(owners_seen) > 1  # the shards are dealt anew each epoch
    # batches are the epoch order, batch_size at a time
    first = torch.cat([b for b, _ in zip(ranks[1].batches(), range(6))])
    assert torch.equal(first, torch.from_numpy(ranks[1].epoch_order(0)))


def test_uneven_shards_use_the_least_any_rank_is_dealt():
    sample_shard = np.repeat(np.arange(5), [10, 9, 11, 10, 8])
    ranks = [ShardBatchSampler(sample_shard, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == (8 + 9) // 4  # two shards each at least: the two smallest
    for epoch in range(5):
        orders = [r.epoch_order(epoch) for r in ranks]
        assert all(len(o) == 16 and len(set(o.tolist())) == 16 for o in orders)
        assert not set(orders[0].tolist()) & set(orders[1].tolist())


def test_resume_from_any_step_matches_the_uninterrupted_order():
    sampler = ShardBatchSampler(np.repeat(np.arange(4), [5, 7, 6, 6]), 3, seed=11, rank=1, world_size=2)
    straight = [b for b, _ in zip(sampler.batches(0), range(4 * sampler.steps_per_epoch))]
    for k in (1, sampler.steps_per_epoch, sampler.steps_per_epoch + 2, 3 * sampler.steps_per_epoch - 1):
        resumed = [b for b, _ in zip(sampler.batches(k), range(len(straight) - k))]
        assert all(torch.equal(a, b) for a, b in zip(straight[k:], resumed))


def test_resumed_training_batches_are_the_same_pixels(sharded):
    _, out = sharded
    cfg = DataConfig(**CFG, random_crop=True, random_flip=True)
    train = load_datasets(f"shards:{out}", cfg).train
    sampler = train.batch_sampler(2, seed=5)
    assert isinstance(sampler, ShardBatchSampler)
    straight = [x for (x, _), _ in zip(train_batches(train, sampler, 0, cfg, seed=5), range(8))]
    resumed = [x for (x, _), _ in zip(train_batches(train, sampler, 5, cfg, seed=5), range(3))]
    assert all(torch.equal(a, b) for a, b in zip(straight[5:], resumed))


def test_split_pickles_without_open_files_and_reads_in_workers(sharded):
    import pickle

    _, out = sharded
    train = load_datasets(f"shards:{out}", DataConfig(**CFG)).train
    first = train.read(0)
    assert train._reader is not None and train._reader.files
    copy = pickle.loads(pickle.dumps(train))
    assert copy._reader is None and np.array_equal(copy.read(0), first)
    x, _ = next(iter(train.batches(len(train), num_workers=2)))
    assert torch.equal(x, train.batch(range(len(train)))[0])


# ----------------------------------------------------------------------------- bad inputs
def test_fewer_shards_than_processes_is_one_line(sharded):
    _, out = sharded
    train = load_datasets(f"shards:{out}/shard-000000.tar", DataConfig(**CFG)).train
    with pytest.raises(UserError) as err:
        train.batch_sampler(2, seed=0, rank=0, world_size=2)
    message = str(err.value)
    assert "1 shard holds" in message and "2 processes" in message and "--shard-size" in message and "\n" not in message


@pytest.mark.parametrize("case", ["no-tar", "no-match", "truncated", "not-a-tar", "cut-header", "empty-spec"])
def test_bad_shards_are_one_line_errors(case, sharded, tmp_path, capsys):
    _, out = sharded
    first = (out / "shard-000000.tar").read_bytes()
    folder = tmp_path / "bad"
    folder.mkdir()
    spec = str(folder)
    if case == "no-tar":
        (folder / "readme.txt").write_text("hi")
        fragment = "no .tar shards"
    elif case == "no-match":
        spec = f"{out}/train-{{000000..000009}}.tar"
        fragment = "no shard matches"
    elif case == "truncated":  # cut in the middle of an image
        (folder / "a.tar").write_bytes(first[:2000])
        fragment = "a.tar"
    elif case == "not-a-tar":
        (folder / "a.tar").write_bytes(b"this is not a tar file" * 40)
        fragment = "not a readable tar file"
    elif case == "cut-header":  # cut just after a member: tarfile alone would end there silently
        with tarfile.open(out / "shard-000000.tar") as tf:
            second = tf.getmembers()[2]
        (folder / "a.tar").write_bytes(first[: second.offset] + b"\x01" * 512)
        fragment = "truncated or corrupt"
    else:
        spec = ""
        fragment = "needs a folder or a pattern"
    line = one_line_error(capsys, ["train-autoencoder", "--config", "tiny", "--data", f"shards:{spec}", "--out", str(tmp_path / "run"),
                                   "--max-steps", "2", "--set", "train.progress=false"])
    assert fragment in line, line
    assert not (tmp_path / "run").exists()


def test_bad_shard_command_inputs_are_one_line(tmp_path, capsys):
    assert "not found" in one_line_error(capsys, ["shard", str(tmp_path / "nope"), str(tmp_path / "out")])
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "flat" / "a.png")
    assert "subfolder per class" in one_line_error(capsys, ["shard", str(tmp_path / "flat"), str(tmp_path / "o"), "--labels", "folders"])
    assert "--shard-size" in one_line_error(capsys, ["shard", str(tmp_path / "flat"), str(tmp_path / "o"), "--shard-size", "lots"])
    assert "--prefix" in one_line_error(capsys, ["shard", str(tmp_path / "flat"), str(tmp_path / "o"), "--prefix", "a/b"])
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- both stages
FAST = ["--set", "train.progress=false", "--set", "data.num_workers=0", "--set", "train.image_every=1000"]


def test_both_stages_and_the_code_cache_train_on_shards(sharded, tmp_path):
    _, out = sharded
    ae = tmp_path / "ae"
    assert main(["train-autoencoder", "--config", "tiny", "--data", f"shards:{out}", "--out", str(ae), "--max-steps", "2", *FAST,
                 "--set", "train.eval_max_images=8", "--set", "data.channels=3"]) == 0
    ldm = tmp_path / "ldm"
    assert main(["train-diffusion", "--config", "tiny", "--autoencoder", str(ae), "--data", f"shards:{out}", "--labels", "folders",
                 "--out", str(ldm), "--max-steps", "2", *FAST, "--set", "train.sample_steps=2"]) == 0
    info = json.loads((ldm / "pipeline" / "vqldm.json").read_text())
    assert info["num_classes"] == 2

    from vqldm.autoencoder.model import load_vqvae
    from vqldm.latents.cache import CacheConfig, prepare_code_cache

    vqvae = load_vqvae(ae).vqvae
    datasets = load_datasets(f"shards:{out}", DataConfig(**CFG, labels="folders"))
    codes = prepare_code_cache(tmp_path / "cache", vqvae, datasets, CacheConfig(), 16, 3, "resize", log=lambda _: None, progress=False)
    assert codes.train.codes.shape[0] == len(datasets.train)
    again = prepare_code_cache(tmp_path / "cache", vqvae, datasets, CacheConfig(), 16, 3, "resize", log=lambda _: None, progress=False)
    assert again.key == codes.key  # keyed by the shard index's fingerprint: reused
