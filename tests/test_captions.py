"""Captions as data (``data.captions``): folders (metadata.jsonl in any folder, which wins over a .txt beside
the image), hf: datasets (the caption column), shards (.txt members), the one-line errors (a malformed metadata
line, a missing caption, a source without captions), fingerprints, and the latent cache storing them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqldm.autoencoder.model import AutoencoderModelConfig, build_vqmodel
from vqldm.cli.main import main
from vqldm.data.captions import PackedStrings, check_captions
from vqldm.data.config import DataConfig
from vqldm.data.sources import load_datasets
from vqldm.data.splits import ArraySplit
from vqldm.latents.cache import CacheConfig, cache_key, load_latent_cache, prepare_code_cache, prepare_latent_cache
from vqldm.plumbing.errors import UserError

CFG = dict(image_size=16, channels=1, fit="pad", num_workers=0, holdout_fraction=0.0)


def images(root, names, seed: int = 0):
    rng = np.random.default_rng(seed)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(path)
    return root


def jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def load(source, **kw):
    return load_datasets(str(source), DataConfig(**{**CFG, **kw}), log=lambda _: None, progress=False)


def by_item(split) -> dict[str, str]:
    return {split.item_name(i): split.captions[i] for i in range(len(split))}


# ----------------------------------------------------------------------------- image folders
def test_folder_metadata_jsonl_in_root_and_subfolders(tmp_path):
    images(tmp_path, ["a.png", "b.png", "sub/c.png", "sub/deep/d.png"])
    jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": " a cat \n"}, "",
                                         {"file_name": "sub/c.png", "text": "from the root", "other": 1}])
    jsonl(tmp_path / "sub" / "metadata.jsonl", [{"file_name": "c.png", "text": "from sub"},  # deeper wins
                                                {"file_name": "deep/d.png", "text": "a dog"}])
    (tmp_path / "b.txt").write_text("a bird\n", encoding="utf-8")
    ds = load(tmp_path, captions=True)
    assert by_item(ds.train) == {"a.png": "a cat", "b.png": "a bird", "sub/c.png": "from sub", "sub/deep/d.png": "a dog"}
    assert ds.skipped == []  # neither metadata.jsonl nor b.txt is a skipped "image"
    assert by_item(ds.holdout) == {"sub/deep/d.png": "a dog"}  # the one held-out image, shared with training
    assert load(tmp_path).train.captions is None and load(tmp_path).skipped == []


def test_folder_txt_beside_image_and_metadata_precedence(tmp_path):
    images(tmp_path, ["x/1.png", "x/2.jpg", "x/3.png"])
    (tmp_path / "x" / "1.txt").write_text("one", encoding="utf-8")
    (tmp_path / "x" / "2.txt").write_text("two from txt", encoding="utf-8")
    (tmp_path / "x" / "3.txt").write_text("three", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a caption: no image beside it", encoding="utf-8")
    jsonl(tmp_path / "x" / "metadata.jsonl", [{"file_name": "2.jpg", "text": "two from jsonl"},
                                              {"file_name": "3.png"}])  # no text: the .txt stands
    ds = load(tmp_path, captions=True, holdout_fraction=0.3)
    assert {**by_item(ds.train), **by_item(ds.holdout)} == {"x/1.png": "one", "x/2.jpg": "two from jsonl", "x/3.png": "three"}
    assert [s.path for s in ds.skipped] == ["notes.txt"]


@pytest.mark.parametrize("line, says", [
    ('{"file_name": "a.png", "text": "ok"', "is not JSON"),
    ('["a.png", "text"]', 'has no "file_name"'),
    ('{"text": "no name"}', 'has no "file_name"'),
    ('{"file_name": "a.png", "text": 3}', '"text" is int, not a string'),
])
def test_malformed_metadata_line_is_one_line_naming_file_and_line(tmp_path, line, says):
    images(tmp_path, ["a.png", "b.png"])
    jsonl(tmp_path / "metadata.jsonl", [{"file_name": "b.png", "text": "fine"}, line])
    with pytest.raises(UserError) as err:
        load(tmp_path, captions=True)
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'metadata.jsonl'}:2 ") or msg.startswith(f"{tmp_path / 'metadata.jsonl'}:2:")
    assert says in msg and '{"file_name": "0001.png", "text": "a red car"}' in msg and "\n" not in msg
    assert load(tmp_path).train.captions is None  # without data.captions nothing is read


def test_missing_caption_names_the_first_image(tmp_path):
    images(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "a"}, {"file_name": "c.png", "text": "   "}])
    with pytest.raises(UserError) as err:
        load(tmp_path, captions=True)
    assert str(err.value) == (f"3 of 4 training images in {str(tmp_path)!r} have no caption (first: b.png); "
                              "give each image a `text` in metadata.jsonl or a .txt beside it")
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "d.txt").write_text("d")
    with pytest.raises(UserError, match=r"^1 of 4 training images .* has no caption \(first: c.png\)"):
        load(tmp_path, captions=True)


def test_fingerprint_follows_captions_only_when_read(tmp_path):
    images(tmp_path, ["a.png", "b.png"])
    jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "a"}, {"file_name": "b.png", "text": "b"}])
    plain, with_text = load(tmp_path).train.fingerprint(), load(tmp_path, captions=True).train.fingerprint()
    jsonl(tmp_path / "metadata.jsonl", [{"file_name": "a.png", "text": "a"}, {"file_name": "b.png", "text": "b, edited"}])
    assert load(tmp_path).train.fingerprint() == plain  # the keys of runs without captions never change
    edited = load(tmp_path, captions=True).train.fingerprint()
    assert len({plain, with_text, edited}) == 3
    split = load(tmp_path, captions=True).train
    assert split.subset(1).captions[0] == split.captions[0] and len(split.subset(1).captions) == 1


# ----------------------------------------------------------------------------- other sources
def _hf_dataset(hf, root, texts_train, texts_test, column="text"):
    rng = np.random.default_rng(0)
    def part(texts):
        pics = [Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)) for _ in texts]
        return hf.Dataset.from_dict({"image": pics, column: texts, "n": list(range(len(texts)))},
                                    features=hf.Features({"image": hf.Image(), column: hf.Value("string"), "n": hf.Value("int64")}))
    hf.DatasetDict({"train": part(texts_train), "test": part(texts_test)}).save_to_disk(str(root))
    return root


def test_hf_dataset_caption_column(tmp_path):
    hf = pytest.importorskip("datasets")
    root = _hf_dataset(hf, tmp_path / "ds", ["zero", "one ", "two"], ["held"])
    ds = load(f"hf:{root}", captions=True)
    assert list(ds.train.captions) == ["zero", "one", "two"] and list(ds.holdout.captions) == ["held"]
    assert ds.train.item_name(2) == "row 2" and load(f"hf:{root}").train.captions is None
    assert ds.train.fingerprint() != load(f"hf:{root}").train.fingerprint()
    with pytest.raises(UserError, match=r"not text; pick the column of captions with --set data.caption_column=NAME"):
        load(f"hf:{root}", captions=True, caption_column="n")
    with pytest.raises(UserError) as err:
        load(f"hf:{root}", captions=True, caption_column="txt")
    assert str(err.value) == (f"the Hugging Face dataset {str(root)!r} has no column 'txt' (columns: image, text, n); "
                              "name the one that holds the captions with --set data.caption_column=NAME")

    other = _hf_dataset(hf, tmp_path / "other", ["a", None, "c"], ["h"], column="prompt")
    with pytest.raises(UserError) as err:
        load(f"hf:{other}", captions=True)
    assert str(err.value).startswith(f"1 of 3 training images in 'hf:{other}' has no caption (first: row 1); "
                                     "fill in the 'prompt' column of every row")
    bare = tmp_path / "bare"
    hf.Dataset.from_dict({"image": [Image.new("L", (12, 12))], "n": [0]},
                         features=hf.Features({"image": hf.Image(), "n": hf.Value("int64")})).save_to_disk(str(bare))
    with pytest.raises(UserError, match=r"has no caption column \(text, caption, captions, prompt\) \(columns: image, n\)"):
        load(f"hf:{bare}", captions=True)


def test_shards_carry_their_txt_members(tmp_path, capsys):
    folder = images(tmp_path / "images", [f"im{i}.png" for i in range(5)])
    jsonl(folder / "metadata.jsonl", [{"file_name": f"im{i}.png", "text": f"picture {i}"} for i in range(4)])
    (folder / "im4.txt").write_text("picture 4")
    assert main(["shard", str(folder), str(tmp_path / "shards"), "--no-progress", "--shard-size", "2"]) == 0
    assert "5 captions" in capsys.readouterr().out
    ds = load(f"shards:{tmp_path / 'shards'}", captions=True)
    assert {ds.train.keys[i]: ds.train.captions[i] for i in range(len(ds.train))} == {f"im{i}": f"picture {i}" for i in range(5)}
    assert ds.train.item_name(0).startswith(f"sample {ds.train.keys[0]!r} of shard-")
    plain = load(f"shards:{tmp_path / 'shards'}").train
    assert plain.captions is None and plain.fingerprint() != ds.train.fingerprint()
    assert ds.train.subset(2).captions[1] == ds.train.captions[1]


def test_sources_without_captions_say_so(tmp_path):
    with pytest.raises(UserError, match=r"^mnist has no captions; use a folder with metadata.jsonl"):
        load("mnist", captions=True)  # before any download
    with pytest.raises(UserError, match=r"^captions are read from a downloaded dataset, not a stream"):
        load("hf:someone/dataset", captions=True, streaming=True)
    split = ArraySplit(torch.zeros(2, 1, 16, 16, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(UserError, match=r"^the training images of 'random' have no captions"):
        check_captions(split, "'random'")
    split.captions = PackedStrings.of(["x", ""])
    with pytest.raises(UserError, match=r"^1 of 2 training images in 'random' has no caption \(first: image 1\)"):
        check_captions(split, "'random'")


# ----------------------------------------------------------------------------- the latent cache
def tiny_vqvae():
    torch.manual_seed(0)
    cfg = AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=3, codebook_size=16, norm_num_groups=4,
                                 mid_block_add_attention=False)
    return build_vqmodel(cfg, 16, 1).eval().requires_grad_(False)


def test_latent_cache_stores_captions_for_every_view(tmp_path):
    folder = images(tmp_path / "images", [f"{i}.png" for i in range(6)])
    texts = {f"{i}.png": f"caption {i} " + "é" * i for i in range(6)}
    jsonl(folder / "metadata.jsonl", [{"file_name": k, "text": v} for k, v in texts.items()])
    vq = tiny_vqvae()
    ds = load(folder, captions=True, holdout_fraction=0.3)
    cfg = CacheConfig(hflip=True, encode_batch_size=4)
    cache = prepare_latent_cache(tmp_path / "cache", vq, ds, cfg, 16, 1, "pad", log=lambda _: None, progress=False)
    n = cache.train.items.shape[0]
    assert n == len(ds.train) and len(cache.train) == 2 * n
    assert list(cache.train.captions) == list(ds.train.captions) and list(cache.holdout.captions) == list(ds.holdout.captions)
    assert [cache.train.captions[int(r)] for r in cache.train.rows([0, n, n + 1])] == [ds.train.captions[0]] * 2 + [ds.train.captions[1]]
    assert cache.train.rows(torch.tensor([n + 1, 1])).tolist() == [1, 1]
    x, y = cache.train.batch(torch.tensor([0, n]))  # batch() is what it was: (items, labels)
    assert x.shape[0] == 2 and y.tolist() == [-1, -1]
    assert json.loads((cache.folder / "index.json").read_text())["captions"] is True

    again = load_latent_cache(cache.folder, cache.key)  # mapped from disk
    assert isinstance(again.train.captions.blob, np.ndarray) and list(again.train.captions) == list(ds.train.captions)
    codes = prepare_code_cache(tmp_path / "cache", vq, ds, cfg, 16, 1, "pad", log=lambda _: None, progress=False)
    assert codes.train.captions[int(codes.train.rows([n])[0])] == ds.train.captions[0]
    assert list(codes.holdout.captions) == list(ds.holdout.captions)

    # no captions: another key (the one of a run before captions existed), and no caption stored
    plain = load(folder, holdout_fraction=0.3)
    assert cache_key(vq, plain, cfg, 16, 1, "pad") != cache.key
    without = prepare_latent_cache(tmp_path / "cache", vq, plain, cfg, 16, 1, "pad", log=lambda _: None, progress=False)
    assert without.train.captions is None and without.folder != cache.folder
    from vqldm.diffusion.conditioning import TextConditioningInputs

    with pytest.raises(UserError, match="a text model needs captions"):  # a text run refuses it in one line
        TextConditioningInputs(without.train, None, 0.1, "cpu")
    # an edited caption is another cache
    jsonl(folder / "metadata.jsonl", [{"file_name": k, "text": v + "!"} for k, v in texts.items()])
    assert cache_key(vq, load(folder, captions=True, holdout_fraction=0.3), cfg, 16, 1, "pad") != cache.key
    assert cache_key(vq, load(folder, holdout_fraction=0.3), cfg, 16, 1, "pad") == without.key
