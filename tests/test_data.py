"""Data layer: every supported image mode and format, channel conversion, fits, folders, labels, splits,
named datasets (IDX files) and the resumable batch order."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqldm.data.loading import BatchSampler
from vqldm.data.config import DataConfig
from vqldm.data.decode import fit_array, load_image, pil_to_array
from vqldm.data.sources import load_datasets, load_folder
from vqldm.plumbing.errors import UserError


def pixels(split) -> torch.Tensor:
    """Every image of a split, uint8 N x C x H x W (read through the split, as training reads them)."""
    return torch.stack([split[i][0] for i in range(len(split))])


def luma(r, g, b) -> int:
    """PIL's convert("L"): ITU-R 601-2 luma, rounded."""
    return int((r * 299 + g * 587 + b * 114 + 500) // 1000)


# ----------------------------------------------------------------------------- modes, in memory
def test_mode_1_bilevel():
    img = Image.new("1", (4, 3), 0)
    img.putpixel((1, 1), 1)
    gray = pil_to_array(img, 1)
    assert gray.shape == (3, 4, 1) and gray.dtype == np.uint8
    assert gray[1, 1, 0] == 255 and gray[0, 0, 0] == 0
    rgb = pil_to_array(img, 3)
    assert rgb.shape == (3, 4, 3) and tuple(rgb[1, 1]) == (255, 255, 255)


def test_mode_L_and_grayscale_to_rgb():
    img = Image.fromarray(np.array([[0, 77], [128, 255]], dtype=np.uint8), "L")
    assert pil_to_array(img, 1)[..., 0].tolist() == [[0, 77], [128, 255]]
    rgb = pil_to_array(img, 3)
    assert (rgb == rgb[..., :1]).all() and rgb[..., 0].tolist() == [[0, 77], [128, 255]]


def test_rgb_to_grayscale_is_luma():
    arr = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 200, 30]]], dtype=np.uint8)
    gray = pil_to_array(Image.fromarray(arr, "RGB"), 1)[..., 0]
    assert gray.tolist() == [[luma(255, 0, 0), luma(0, 255, 0)], [luma(0, 0, 255), luma(10, 200, 30)]]
    assert pil_to_array(Image.fromarray(arr, "RGB"), 3).tolist() == arr.tolist()


def test_alpha_is_composited_over_white():
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA")  # transparent black, opaque black
    assert pil_to_array(la, 1)[0, :, 0].tolist() == [255, 0]
    rgba = Image.fromarray(np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 255, 128]]], dtype=np.uint8), "RGBA")
    out = pil_to_array(rgba, 3)[0]
    assert out[0].tolist() == [255, 255, 255]  # fully transparent -> white background
    assert out[1].tolist() == [255, 0, 0]  # opaque -> the colour
    assert abs(int(out[2][0]) - 127) <= 1 and out[2][2] == 255  # half transparent blue over white


def test_palette_with_and_without_transparency():
    p = Image.new("P", (3, 1))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    p.putdata([0, 1, 2])
    assert pil_to_array(p, 3)[0].tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    p.info["transparency"] = 0  # index 0 transparent -> white
    assert pil_to_array(p, 3)[0].tolist() == [[255, 255, 255], [255, 0, 0], [0, 255, 0]]
    assert pil_to_array(p, 1)[0, :, 0].tolist() == [255, luma(255, 0, 0), luma(0, 255, 0)]


def test_cmyk():
    cmyk = Image.new("CMYK", (2, 1), (0, 0, 0, 0))  # no ink = white
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # full black ink
    assert pil_to_array(cmyk, 3)[0].tolist() == [[255, 255, 255], [0, 0, 0]]
    assert pil_to_array(cmyk, 1)[0, :, 0].tolist() == [255, 0]


def test_sixteen_bit_int_and_float_modes_are_rescaled():
    i16 = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert i16.mode == "I;16"
    assert pil_to_array(i16, 1)[0, :, 0].tolist() == [0, 128, 255]
    i32 = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.int32))  # > 255: a 16-bit range
    assert pil_to_array(i32, 1)[0, :, 0].tolist() == [0, round(1000 / 65535 * 255), 255]
    i8 = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32))  # <= 255: an 8-bit range
    assert pil_to_array(i8, 1)[0, :, 0].tolist() == [0, 100, 255]
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert pil_to_array(f01, 1)[0, :, 0].tolist() == [0, 128, 255]
    f255 = Image.fromarray(np.array([[0.0, 64.0, 300.0]], dtype=np.float32))
    assert pil_to_array(f255, 1)[0, :, 0].tolist() == [0, 64, 255]
    assert pil_to_array(i16, 3).shape == (1, 3, 3)


# ----------------------------------------------------------------------------- modes and formats, from files
def _pattern(h=12, w=10) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((yy * 20 + xx * 7) % 256).astype(np.uint8)


def _file_cases(tmp: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, expected grayscale uint8 HxW)."""
    g = _pattern()
    rgb = np.stack([g, 255 - g, (g // 2)], axis=-1)
    gray_of_rgb = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    cases: dict[str, tuple[Path, np.ndarray]] = {}

    def save(name, img, fmt, expected, **kw):
        path = tmp / name
        img.save(path, format=fmt, **kw)
        cases[name] = (path, expected)

    save("mode_1.png", Image.fromarray(g > 127), "PNG", np.where(g > 127, 255, 0).astype(np.uint8))
    save("mode_L.png", Image.fromarray(g, "L"), "PNG", g)
    la = np.stack([g, np.full_like(g, 255)], axis=-1)
    la[0, 0] = (0, 0)  # one transparent pixel -> white
    exp = g.copy()
    exp[0, 0] = 255
    save("mode_LA.png", Image.fromarray(la, "LA"), "PNG", exp)
    pal = Image.fromarray(g, "L").convert("P")
    save("mode_P.png", pal, "PNG", g)
    pal_t = Image.fromarray(g, "L").convert("P")
    transparent_index = pal_t.getpixel((0, 0))
    exp = np.where(np.asarray(pal_t) == transparent_index, 255, g).astype(np.uint8)
    save("mode_P_transparency.png", pal_t, "PNG", exp, transparency=transparent_index)
    save("mode_RGB.png", Image.fromarray(rgb, "RGB"), "PNG", gray_of_rgb)
    rgba = np.concatenate([rgb, np.full_like(g, 255)[..., None]], axis=-1)
    save("mode_RGBA.png", Image.fromarray(rgba, "RGBA"), "PNG", gray_of_rgb)
    save("mode_I16.png", Image.fromarray(g.astype(np.uint16) * 257), "PNG", g)
    save("mode_I.tif", Image.fromarray(g.astype(np.int32) * 257), "TIFF", g)
    save("mode_F.tif", Image.fromarray(g.astype(np.float32) / 255.0), "TIFF", g)
    save("mode_CMYK.jpg", Image.fromarray(rgb, "RGB").convert("CMYK"), "JPEG", gray_of_rgb, quality=100)
    save("jpeg_L.jpg", Image.fromarray(g, "L"), "JPEG", g, quality=100)
    save("jpeg_RGB.jpeg", Image.fromarray(rgb, "RGB"), "JPEG", gray_of_rgb, quality=100)
    save("webp_RGB.webp", Image.fromarray(rgb, "RGB"), "WEBP", gray_of_rgb, lossless=True)
    save("webp_RGBA.webp", Image.fromarray(rgba, "RGBA"), "WEBP", gray_of_rgb, lossless=True)
    return cases


def test_every_mode_and_format_loads_from_file(tmp_path):
    cases = _file_cases(tmp_path)
    for name, (path, expected) in cases.items():
        arr = load_image(path, channels=1, size=12, fit="pad")  # 12 x 10 -> centered pad to 12 x 12
        assert arr.shape == (12, 12, 1) and arr.dtype == np.uint8, name
        got = arr[:, 1:11, 0].astype(int)
        lossy = name.endswith((".jpg", ".jpeg")) or "CMYK" in name
        tol = 8 if lossy else 1
        assert np.abs(got - expected.astype(int)).max() <= tol, (name, np.abs(got - expected.astype(int)).max())
        rgb = load_image(path, channels=3, size=12, fit="pad")
        assert rgb.shape == (12, 12, 3), name


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((4, 8), dtype=np.uint8)
    arr[0, :] = 255  # a bright top row in a landscape image
    img = Image.fromarray(arr, "L")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    img.save(tmp_path / "rotated.png", exif=exif.tobytes())
    out = load_image(tmp_path / "rotated.png", channels=1, size=8, fit="pad")[..., 0]
    # viewed upright it is portrait (8 high, 4 wide) with the bright row turned into the right column
    assert out[:, 2:6].shape == (8, 4)
    assert (out[:, 5] == 255).all() and (out[:, 2] == 0).all()


# ----------------------------------------------------------------------------- fits
def test_fit_pad_centers_small_images():
    arr = np.full((4, 6, 1), 200, dtype=np.uint8)
    out = fit_array(arr, 8, "pad")
    assert out.shape == (8, 8, 1)
    assert (out[2:6, 1:7] == 200).all() and out[:2].max() == 0 and out[:, :1].max() == 0


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_fit_crop_centers_large_images(fit):
    arr = np.arange(10 * 12, dtype=np.uint8).reshape(10, 12, 1)
    out = fit_array(arr, 8, fit)
    assert out.shape == (8, 8, 1)
    assert np.array_equal(out, arr[1:9, 2:10])


def test_fit_resize_scales_the_shorter_side_then_center_crops():
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255  # left half white -> after resize to 8 x 16 and center crop: left half of the crop white
    out = fit_array(arr, 8, "resize")
    assert out.shape == (8, 8, 3)
    assert out[:, :3].min() > 200 and out[:, 5:].max() < 50
    up = fit_array(np.full((4, 4, 1), 90, dtype=np.uint8), 16, "resize")  # upscaling small images
    assert up.shape == (16, 16, 1) and abs(int(up.mean()) - 90) <= 1


# ----------------------------------------------------------------------------- folders
def _write_gray(path: Path, value: int, size=(10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8), "L").save(path)


def test_folder_labels_from_subfolders(tmp_path):
    for i in range(5):
        _write_gray(tmp_path / "cats" / f"{i}.png", 10 + i)
        _write_gray(tmp_path / "birds" / "deep" / f"{i}.png", 100 + i)  # recursive within a class
    _write_gray(tmp_path / "loose.png", 50)  # not in a class folder
    _write_gray(tmp_path / ".hidden" / "x.png", 1)  # hidden folders are ignored
    (tmp_path / ".DS_Store").write_bytes(b"junk")  # hidden files too
    cfg = DataConfig(image_size=8, labels="folders", holdout_fraction=0.0)
    logs = []
    ds = load_folder(tmp_path, cfg, log=logs.append, progress=False)
    assert ds.train.class_names == ["birds", "cats"] and ds.num_classes == 2
    assert len(ds.train) == 10
    means = pixels(ds.train).float().mean(dim=(1, 2, 3))
    for label, mean in zip(ds.train.labels.tolist(), means.tolist()):
        # pad to 8: the center crop of a 10 x 10 flat image is flat
        assert (label == 0) == (mean >= 100)
    assert [s.path for s in ds.skipped] == ["loose.png"] and ds.skipped[0].reason == "not in a class subfolder"
    assert len(logs) == 1 and logs[0].startswith("warning: skipped 1 of")


def test_unlabelled_folder_is_recursive_and_split_stably(tmp_path):
    for i in range(40):
        _write_gray(tmp_path / f"part{i % 3}" / f"{i:02d}.png", i)
    cfg = DataConfig(image_size=8, holdout_fraction=0.25)
    a = load_datasets(str(tmp_path), cfg, log=lambda m: None, progress=False)
    b = load_datasets(str(tmp_path), cfg, log=lambda m: None, progress=False)
    assert len(a.train) + len(a.holdout) == 40 and 0 < len(a.holdout) < 20
    assert torch.equal(pixels(a.train), pixels(b.train)) and torch.equal(pixels(a.holdout), pixels(b.holdout))
    assert (a.train.labels == -1).all() and a.num_classes == 0
    assert pixels(a.train).shape[1:] == (1, 8, 8) and pixels(a.train).dtype == torch.uint8
    x, _ = a.train.batch([0, 1])
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    # the split depends only on each file's path: adding files never moves the old ones
    _write_gray(tmp_path / "new.png", 99)
    c = load_datasets(str(tmp_path), cfg, log=lambda m: None, progress=False)
    old_holdout = {float(v) for v in pixels(a.holdout).float().mean(dim=(1, 2, 3))}
    assert old_holdout <= {float(v) for v in pixels(c.holdout).float().mean(dim=(1, 2, 3))}
    capped = load_datasets(str(tmp_path), DataConfig(image_size=8, holdout_fraction=0.25, max_images=5),
                           log=lambda m: None, progress=False)
    assert len(capped.train) == 5


def test_single_image_folder_gives_both_splits(tmp_path):
    _write_gray(tmp_path / "only.png", 7)
    ds = load_datasets(str(tmp_path), DataConfig(image_size=8), log=lambda m: None, progress=False)
    assert len(ds.train) == 1 and len(ds.holdout) == 1


def test_symlink_loop_terminates(tmp_path):
    _write_gray(tmp_path / "a" / "x.png", 5)
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a -> root -> a -> ...
    ds = load_datasets(str(tmp_path), DataConfig(image_size=8, holdout_fraction=0.0), log=lambda m: None, progress=False)
    assert len(ds.train) == 1


def _bad_source(tmp: Path, kind: str) -> Path:
    if kind == "file":
        (tmp / "file.png").write_bytes(b"x")
        return tmp / "file.png"
    if kind == "empty":
        (tmp / "empty").mkdir()
        return tmp / "empty"
    if kind == "all-broken":
        (tmp / "junk").mkdir()
        (tmp / "junk" / "a.png").write_bytes(b"not a png")
        (tmp / "junk" / "b.txt").write_text("notes")
        return tmp / "junk"
    return tmp / "missing"


@pytest.mark.parametrize(
    "kind,message",
    [("missing", "not found"), ("file", "is a file"), ("empty", "is empty"), ("all-broken", "no usable image")],
)
def test_bad_sources_are_user_errors(tmp_path, kind, message):
    with pytest.raises(UserError, match=message):
        load_datasets(str(_bad_source(tmp_path, kind)), DataConfig(image_size=8), log=lambda m: None, progress=False)
    with pytest.raises(UserError, match="no data given"):
        load_datasets(None, DataConfig())


def test_labels_folders_without_subfolders_is_an_error(tmp_path):
    _write_gray(tmp_path / "a.png", 1)
    with pytest.raises(UserError, match="one subfolder per class"):
        load_datasets(str(tmp_path), DataConfig(image_size=8, labels="folders"), log=lambda m: None, progress=False)


# ----------------------------------------------------------------------------- named datasets (IDX)
def _write_idx(path: Path, arr: np.ndarray, truncate: bool = False) -> None:
    header = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if truncate:
        data = data[:-10]
    with gzip.open(path, "wb") as fh:
        fh.write(data)


def test_named_mnist_from_local_idx_files(tmp_path, monkeypatch):
    root = tmp_path / "mnist"
    root.mkdir()
    rng = np.random.default_rng(0)
    _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (6, 28, 28)))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(6) % 10)
    monkeypatch.setenv("VQLDM_DATA_DIR", str(tmp_path))
    ds = load_datasets("mnist", DataConfig(image_size=16, channels=3, fit="resize"), progress=False)
    assert pixels(ds.train).shape == (20, 3, 16, 16) and pixels(ds.holdout).shape == (6, 3, 16, 16)
    assert ds.train.labels.tolist() == [i % 10 for i in range(20)] and ds.num_classes == 10
    assert ds.source == "mnist"
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (6, 28, 28)), truncate=True)
    with pytest.raises(UserError, match="truncated"):
        load_datasets("mnist", DataConfig(image_size=16), progress=False)


# ----------------------------------------------------------------------------- batch order
def test_batch_order_is_seeded_and_covers_each_epoch():
    a = BatchSampler(50, 8, seed=3)
    b = BatchSampler(50, 8, seed=3)
    c = BatchSampler(50, 8, seed=4)
    first = [next(iter_) for iter_ in [a.batches()] for _ in range(a.steps_per_epoch)]
    again = [x for x, _ in zip(b.batches(), range(b.steps_per_epoch))]
    other = [x for x, _ in zip(c.batches(), range(c.steps_per_epoch))]
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not all(torch.equal(x, y) for x, y in zip(first, other))
    seen = torch.cat(first)
    assert seen.unique().numel() == seen.numel() == 6 * 8  # drop-last, no repeats within an epoch


def test_batch_order_resumes_mid_epoch_and_splits_across_ranks():
    s = BatchSampler(37, 4, seed=0)
    straight = [x for x, _ in zip(s.batches(0), range(30))]
    resumed = [x for x, _ in zip(s.batches(13), range(17))]
    assert all(torch.equal(x, y) for x, y in zip(straight[13:], resumed))
    ranks = [BatchSampler(37, 4, seed=0, rank=r, world_size=2) for r in range(2)]
    for (x0, x1), g in zip(zip(ranks[0].batches(), ranks[1].batches()), range(6)):
        assert x0.numel() == x1.numel() == 4 and not set(x0.tolist()) & set(x1.tolist())


def test_tiny_dataset_wraps_around():
    s = BatchSampler(3, 8, seed=0)
    batch = next(s.batches())
    assert batch.numel() == 8 and set(batch.tolist()) == {0, 1, 2}
    with pytest.raises(UserError):
        BatchSampler(0, 8, seed=0)
