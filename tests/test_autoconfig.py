"""``--config auto``: what it reads from the data, what it picks for CPU and GPU, its one line, its refusals,
and both stages end to end on an unlabelled RGB folder and on one with class subfolders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml
from PIL import Image

from vqldm.autoencoder.config import AutoencoderRunConfig, auto_autoencoder_config
from vqldm.diffusion.config import DiffusionRunConfig, auto_diffusion_config
from vqldm.cli import main as cli
from vqldm.autoencoder.config import choose_autoencoder
from vqldm.diffusion.config import choose_diffusion
from vqldm.data.summary import describe_data
from vqldm.plumbing.config import load_config
from vqldm.plumbing.errors import UserError
from vqldm.priors.config import PriorRunConfig, auto_prior_config

# fast end-to-end runs: no DataLoader worker processes, 2 DDIM steps for the sample grid
FAST = ["--set", "data.num_workers=0", "--set", "train.progress=false"]


def write_images(folder, n, size=(20, 24), mode="RGB", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        arr = rng.integers(0, 255, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
        Image.fromarray(arr, mode).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    """16 unlabelled RGB images of 20x24 (and files that are not images)."""
    root = write_images(tmp_path_factory.mktemp("rgb"), 16)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    return root


def test_describe_an_unlabelled_rgb_folder(rgb_folder):
    s = describe_data(rgb_folder)
    assert (s.kind, s.count, s.channels, s.median_hw, s.median_side) == ("folder", 16, 3, (20, 24), 20)
    assert (s.labels, s.num_classes, s.subfolders) == ("none", 0, 0)
    assert s.describe() == "16 RGB images (median 20x24, no labels)"


def test_describe_class_subfolders(image_folder):
    s = describe_data(image_folder)  # every image in one of 2 named subfolders: classes
    assert (s.count, s.channels, s.labels, s.class_names) == (24, 3, "folders", ["discs", "squares"])
    assert s.describe() == "24 RGB images (median 20x20, 2 classes)"
    assert describe_data(image_folder, "none").num_classes == 0  # --labels none turns them off


def test_describe_grayscale_and_shards_and_named(tmp_path):
    gray = write_images(tmp_path / "gray", 10, (40, 30), mode="L")
    s = describe_data(gray)
    assert (s.channels, s.median_side, s.min_side, s.max_side) == (1, 30, 30, 30)
    for shard in ("00000", "01000"):  # FFHQ-style numbered chunks are not classes
        write_images(tmp_path / "shards" / shard, 5)
    s = describe_data(tmp_path / "shards")
    assert (s.count, s.labels, s.subfolders) == (10, "none", 2)
    assert "no labels; 2 subfolders" in s.describe()
    assert describe_data(tmp_path / "shards", "folders").num_classes == 2  # unless asked for
    named = describe_data("fashion-mnist")  # known constants: nothing is read or downloaded
    assert (named.kind, named.count, named.channels, named.num_classes) == ("named", 60_000, 1, 10)


def test_describe_refusals(tmp_path):
    with pytest.raises(UserError, match="needs --data"):
        describe_data(None)
    with pytest.raises(UserError, match="not found"):
        describe_data(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        describe_data(tmp_path / "empty")
    write_images(tmp_path / "flat", 3)
    with pytest.raises(UserError, match="--labels folders needs one subfolder per class"):
        describe_data(tmp_path / "flat", "folders")


def summary(count=1432, side=64, channels=3, classes=0):
    s = describe_data("cifar10")  # any summary, then set the fields under test
    return dataclasses.replace(s, source="/data/x", kind="folder", count=count, channels=channels, median_hw=(side, side),
                               min_side=side, max_side=side, median_side=side, labels="folders" if classes else "none",
                               class_names=[str(i) for i in range(classes)])


def test_cpu_gets_a_small_model_sized_by_the_data():
    cfg, line = auto_autoencoder_config(summary(), "cpu")
    assert (cfg.data.image_size, cfg.data.channels, cfg.data.fit, cfg.data.source) == (32, 3, "resize", "/data/x")
    assert cfg.model.block_out_channels == [32, 64, 64] and cfg.train.batch_size == 64
    assert 500 <= cfg.train.max_steps <= 2000
    assert "\n" not in line
    assert line.startswith("auto config: 1,432 RGB images (median 64x64, no labels), cpu -> preset 'small', image_size 32")
    assert line.endswith(f"batch 64, {cfg.train.max_steps} steps")
    small = auto_autoencoder_config(summary(count=40, side=18, channels=1), "cpu")[0]
    assert (small.data.image_size, small.data.channels, small.train.batch_size) == (16, 1, 32)
    more = auto_autoencoder_config(summary(count=50_000), "cpu")[0]
    assert more.train.max_steps > cfg.train.max_steps  # steps grow with the data, within the CPU range
    # the perceptual stage 1 of the small preset, its discriminator fitted into the run
    for c in (cfg, small, more):
        assert c.loss.frequency_weight > 0 and c.loss.disc_weight > 0
        assert c.loss.disc_start <= c.train.max_steps // 2
        assert c.loss.disc_start + c.loss.disc_ramp_steps <= (3 * c.train.max_steps) // 4


def test_gpu_gets_the_ldm_shapes_for_256px():
    cfg, line = auto_autoencoder_config(summary(count=30_000, side=256), "cuda")
    assert (cfg.data.image_size, cfg.model.block_out_channels, cfg.model.latent_channels) == (256, [128, 256, 512], 3)
    assert "preset 'ldm-vq-f4-256'" in line and "f4 -> 3x64x64 latents" in line
    assert cfg.loss.disc_start < cfg.train.max_steps  # the adversarial term switches on within the run
    big = auto_autoencoder_config(summary(count=500_000, side=300), "cuda:0")[0]
    assert big.model.block_out_channels == [128, 256, 256, 512]  # f8
    assert auto_autoencoder_config(summary(side=64), "cuda")[0].data.image_size == 64  # small images: cifar10 shape
    assert choose_diffusion(summary(side=256), (3, 64, 64), "cuda").preset == "celebahq-256"
    assert choose_diffusion(summary(side=32), (4, 8, 8), "cuda").preset == "cifar10"
    assert choose_diffusion(summary(side=32), (4, 8, 8), "cpu").preset == "small"


def test_labels_make_stage_two_class_conditional():
    assert choose_diffusion(summary(classes=3), (4, 8, 8), "cpu").overrides["model"]["class_conditional"] is True
    assert choose_diffusion(summary(), (4, 8, 8), "cpu").overrides["model"]["class_conditional"] is False
    assert "labels" not in choose_autoencoder(summary(classes=3), "cpu").overrides["data"]  # stage 1 needs none


def test_set_overrides_apply_on_top():
    cfg, line = auto_autoencoder_config(summary(), "cpu", ["data.image_size=16", "train.batch_size=8"], max_steps=7)
    assert (cfg.data.image_size, cfg.train.batch_size) == (16, 8)
    assert "image_size 16" in line and line.endswith("batch 8, 7 steps")


def test_no_config_fits(tmp_path):
    with pytest.raises(UserError, match="too few"):
        choose_autoencoder(summary(count=1), "cpu")
    with pytest.raises(UserError, match="too small"):
        choose_autoencoder(summary(side=5), "cpu")
    write_images(tmp_path / "one", 1)
    code = cli.main(["train-autoencoder", "--config", "auto", "--data", str(tmp_path / "one"), "--out", str(tmp_path / "run")])
    assert code == 2 and not (tmp_path / "run").exists()


def test_unknown_preset_suggests_auto(capsys):
    code = cli.main(["train-autoencoder", "--config", "no-such-preset", "--data", "fashion-mnist"])
    err = capsys.readouterr().err
    assert code == 2 and "--config auto" in err and len(err.strip().splitlines()) == 1


def test_presets_auto_picks_all_load():
    for stage, name in [("autoencoder", "small"), ("autoencoder", "ldm-vq-f8-256"), ("diffusion", "small"), ("prior", "small")]:
        cls = {"autoencoder": AutoencoderRunConfig, "diffusion": DiffusionRunConfig, "prior": PriorRunConfig}[stage]
        load_config(cls, name, stage=stage)


@pytest.mark.parametrize("labelled", [False, True], ids=["no-labels", "class-subfolders"])
def test_both_stages_end_to_end(labelled, image_folder, rgb_folder, tmp_path, capsys):
    data = image_folder if labelled else rgb_folder
    ae = tmp_path / "ae"
    code = cli.main(["train-autoencoder", "--config", "auto", "--data", str(data), "--out", str(ae), "--max-steps", "2", *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("auto config:"))
    assert f"{24 if labelled else 16} RGB images" in line and "preset 'small', image_size 16" in line and line.endswith("2 steps")
    assert ("2 classes" in line) is labelled
    saved = yaml.safe_load((ae / "config.yaml").read_text())
    assert saved["data"]["labels"] == "none"  # the autoencoder trains on every image, labelled or not
    assert (saved["data"]["image_size"], saved["data"]["channels"], saved["model"]["block_out_channels"]) == (16, 3, [32, 64, 64])

    ldm = tmp_path / "ldm"
    code = cli.main(["train-diffusion", "--config", "auto", "--autoencoder", str(ae), "--out", str(ldm), "--max-steps", "2",
                     *FAST, "--set", "train.sample_steps=2", "--set", "train.num_sample_images=2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("auto config:"))
    kind = "class-conditional" if labelled else "unconditional"
    assert "autoencoder 3x16x16 -> 4x4x4 latents" in line and f"{kind} UNet 32-64-64" in line and line.endswith("2 steps")
    saved = yaml.safe_load((ldm / "config.yaml").read_text())
    assert saved["model"]["class_conditional"] is labelled
    assert saved["data"]["labels"] == ("folders" if labelled else "none")
    assert (ldm / "pipeline" / "model_index.json").is_file()

    cfg, line = auto_prior_config(ae, None, None, "cpu")  # the prior reads the same data from the autoencoder run
    assert cfg.model.class_conditional is labelled and "4x4 grid of 256 codes" in line
    assert auto_diffusion_config(ae, None, "none", "cpu")[0].model.class_conditional is False  # --labels none


def captioned_folder(root, captioned: int | None = None):
    """8 images in 2 class subfolders; metadata.jsonl captions the first ``captioned`` of them (None: all)."""
    import json

    for cls in ("discs", "squares"):
        write_images(root / cls, 4, size=(16, 16))
    names = [f"{cls}/{i:03d}.png" for cls in ("discs", "squares") for i in range(4)]
    keep = names if captioned is None else names[:captioned]
    (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": f"a picture of {n[:-8]}"}) + "\n" for n in keep))
    return root


def test_describe_counts_captions(tmp_path):
    s = describe_data(captioned_folder(tmp_path / "all"))
    assert (s.count, s.captions, s.captioned, s.num_classes) == (8, 8, True, 2)
    assert s.describe() == "8 RGB images (median 16x16, 2 classes, captioned)"
    part = describe_data(captioned_folder(tmp_path / "part", captioned=5))
    assert (part.captions, part.captioned) == (5, False) and part.describe().endswith("2 classes, captions for only 5)")
    assert describe_data(tmp_path / "all" / "discs").captions == 0  # a caption file above the folder is not its own
    assert cli.main(["shard", str(tmp_path / "all"), str(tmp_path / "shards")]) == 0  # shards keep the captions as .txt members
    assert describe_data(f"shards:{tmp_path / 'shards'}").captions == 8


def test_captions_pick_a_text_to_image_preset():
    captioned = dataclasses.replace(summary(), captions=1432)
    assert choose_diffusion(captioned, (4, 8, 8), "cpu").preset == "small-text"
    assert choose_diffusion(dataclasses.replace(summary(side=256), captions=1432), (3, 64, 64), "cuda").preset == "text-256"
    gpu_small = choose_diffusion(dataclasses.replace(summary(side=32), captions=1432), (4, 8, 8), "cuda")
    assert gpu_small.preset == "cifar10" and gpu_small.overrides["text"] == {"encoder": "scratch"}  # no text preset of that size
    assert choose_diffusion(dataclasses.replace(summary(), captions=1000), (4, 8, 8), "cpu").preset == "small"  # some uncaptioned
    labelled = choose_diffusion(dataclasses.replace(summary(classes=3), captions=1432), (4, 8, 8), "cpu")
    assert labelled.preset == "small" and labelled.overrides["model"]["class_conditional"] is True


def test_captioned_folder_trains_text_to_image_unless_labels_are_asked_for(tmp_path, capsys):
    data = captioned_folder(tmp_path / "data")
    ae = tmp_path / "ae"
    assert cli.main(["train-autoencoder", "--config", "auto", "--data", str(data), "--out", str(ae), "--max-steps", "1", *FAST]) == 0
    cfg, line = auto_diffusion_config(ae, None, None, "cpu")
    assert cfg.text.encoder == "scratch" and not cfg.model.class_conditional and cfg.data.labels == "none"
    assert "captioned" in line and "text-to-image UNet" in line and "preset 'small-text'" in line
    classes = auto_diffusion_config(ae, None, "folders", "cpu")[0]  # --labels folders: the classes win
    assert classes.text.encoder is None and classes.model.class_conditional
    capsys.readouterr()
    ldm = tmp_path / "ldm"
    code = cli.main(["train-diffusion", "--config", "auto", "--autoencoder", str(ae), "--out", str(ldm), "--max-steps", "2",
                     *FAST, "--set", "train.sample_steps=2", "--set", "train.num_sample_images=2"])
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load((ldm / "config.yaml").read_text())
    assert saved["text"]["encoder"] == "scratch" and saved["data"]["captions"] is True
    assert (ldm / "pipeline" / "model_index.json").is_file()
