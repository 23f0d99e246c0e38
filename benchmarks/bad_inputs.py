"""Run every bad input we know of through the real ``vqldm`` command line and tabulate what it says.

    python benchmarks/bad_inputs.py                         # all cases -> docs/bad_inputs.md (and stdout)
    python benchmarks/bad_inputs.py --only convert --out /tmp/t.md
    python benchmarks/bad_inputs.py --list

Each case builds its inputs in a scratch folder, runs ``python -m vqldm ...`` in a subprocess,
and records the exit code, the last line of stderr, whether a traceback appeared, and what was left in
the case's output folder (a failed start must leave nothing; a failed write must leave no half-written
file). The table in ``docs/bad_inputs.md`` is this script's output, never edited by hand.

Adding a case: append a ``Case`` to ``CASES``. ``setup(scratch) -> argv`` creates the inputs and returns
the arguments after ``vqldm``; ``needs`` names artefacts built once and shared (``"ae_run"``: a tiny
trained autoencoder; ``"pipeline"``: a tiny trained pipeline); ``flags`` are options the sub-command
must accept. A command or flag that is not implemented yet (probed with ``--help``, or a "not
implemented" message) marks the case "not run" instead of failing the script.

The helpers that write good and broken image files (``write_good_images``, ``write_broken_files``,
``write_odd_mode_images``) are also used by the test suite (tests/test_reliability_inputs.py).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "bad_inputs.md"
# every train run in this script is tiny: a couple of steps, no progress bars, small evaluation
TINY_AE = ["--config", "tiny", "--max-steps", "2", "--set", "train.progress=false", "--set", "train.image_every=1000",
           "--set", "train.checkpoint_every=1000"]
TINY_LDM = ["--config", "tiny", "--max-steps", "2", "--set", "train.progress=false"]


# ----------------------------------------------------------------------------- image files
def write_good_images(folder: Path, n: int, size: int = 16, seed: int = 0, prefix: str = "good") -> list[Path]:
    """``n`` valid grayscale PNGs (a bright square on noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 60, (size, size), dtype=np.uint8)
        a, b = sorted(rng.integers(1, size - 1, 2))
        arr[a : b + 1, a : b + 1] = 220
        path = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(arr, "L").save(path)
        paths.append(path)
    return paths


def write_odd_mode_images(folder: Path, size: int = 16) -> list[Path]:
    """One valid image per unusual mode/format: 1, P, P+transparency, LA, RGBA, CMYK JPEG, 16-bit PNG,
    32-bit int and float TIFF, WebP, JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    g = ((yy * 13 + xx * 7) % 256).astype(np.uint8)
    rgb = np.stack([g, 255 - g, g // 2], axis=-1)
    items = {
        "mode_1.png": (Image.fromarray(g > 127), {}),
        "mode_P.png": (Image.fromarray(rgb, "RGB").convert("P"), {}),
        "mode_P_transparent.png": (Image.fromarray(g, "L").convert("P"), {"transparency": 0}),
        "mode_LA.png": (Image.fromarray(np.stack([g, 255 - g], axis=-1), "LA"), {}),
        "mode_RGBA.png": (Image.fromarray(np.concatenate([rgb, g[..., None]], axis=-1), "RGBA"), {}),
        "mode_CMYK.jpg": (Image.fromarray(rgb, "RGB").convert("CMYK"), {}),
        "mode_I16.png": (Image.fromarray(g.astype(np.uint16) * 257), {}),
        "mode_I.tif": (Image.fromarray(g.astype(np.int32) * 257), {}),
        "mode_F.tif": (Image.fromarray(g.astype(np.float32) / 255), {}),
        "rgb.webp": (Image.fromarray(rgb, "RGB"), {"lossless": True}),
        "rgb.jpg": (Image.fromarray(rgb, "RGB"), {}),
    }
    paths = []
    for name, (img, kw) in items.items():
        img.save(folder / name, **kw)
        paths.append(folder / name)
    return paths


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb for PIL's check)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def write_broken_files(folder: Path, seed: int = 0) -> dict[str, str]:
    """Every kind of broken file; returns {relative path: the reason vqldm should give when skipping it}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    png = _png_bytes(noise)
    jpg = io.BytesIO()
    Image.fromarray(noise).save(jpg, format="JPEG", quality=95)
    jpg = jpg.getvalue()
    bad_crc = bytearray(png)
    idat = bad_crc.index(b"IDAT")
    for i in range(idat + 8, idat + 40):  # scramble the compressed pixel data
        bad_crc[i] ^= 0x5A
    files = {
        "zero_byte.png": (b"", "zero-byte file"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "truncated.jpg": (jpg[: len(jpg) // 2], "truncated"),
        "garbage.png": (bytes(rng.integers(0, 255, 300, dtype=np.uint8)), "not an image"),
        "text_named.jpg": (b"this is a text file with an image name\n", "not an image"),
        "scrambled.png": (bytes(bad_crc), "corrupt"),
        "bomb.png": (bomb_png(), "too large"),
        "notes.txt": (b"not an image at all\n", "not an image (unsupported extension)"),
        "archive.zip": (b"PK\x03\x04" + bytes(40), "not an image (unsupported extension)"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    os.symlink(folder / "does-not-exist.png", folder / "dangling_link.png")
    expected = {name: reason for name, (_, reason) in files.items()}
    expected["dangling_link.png"] = "unreadable"
    return expected


def write_pickle(path: Path, malicious: bool = False, marker: Path | None = None) -> Path:
    """A torch pickle: a plain state dict, or one that runs code when unpickled (creates ``marker``)."""
    import torch

    if malicious:
        class Exploit:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({"weight": torch.zeros(2), "payload": Exploit()}, path)
    else:
        torch.save({"state_dict": {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.ones(2)}}, path)
    return path


# ----------------------------------------------------------------------------- cases
@dataclass
class Case:
    command: str  # the vqldm sub-command
    name: str  # what is wrong, as the table shows it
    setup: Callable[[Path, dict], list[str]]  # (scratch folder, shared artefacts) -> argv after `vqldm`
    expect_exit: int = 2
    flags: tuple[str, ...] = ()  # options the sub-command must accept
    needs: tuple[str, ...] = ()  # shared artefacts: "ae_run", "pipeline", "text_pipeline", "prior"
    fsize_limit: int | None = None  # bytes: RLIMIT_FSIZE for the run (simulates a disk that fills up)
    expect_in_stderr: str | None = None  # a phrase the last line must contain


@dataclass
class Result:
    case: Case
    status: str  # "ran" | "not run: ..."
    exit_code: int | None = None
    last_line: str = ""
    traceback: bool = False
    left_behind: str = ""
    ok: bool = False
    notes: list[str] = field(default_factory=list)


def _ae(scratch: Path, *extra: str, data: Path | str | None = None, out: str = "out") -> list[str]:
    if data is None:
        data = scratch / "images"
        if not data.exists():
            write_good_images(data, 12)
    return ["train-autoencoder", "--data", str(data), "--out", str(scratch / out), *TINY_AE, *extra]


def _folder_with(scratch: Path, make: Callable[[Path], object]) -> Path:
    folder = scratch / "images"
    folder.mkdir(parents=True, exist_ok=True)
    make(folder)
    return folder


def _broken_only(folder: Path) -> None:
    write_broken_files(folder)


def _mixed(folder: Path) -> None:
    write_good_images(folder, 12)
    write_broken_files(folder / "broken")


def _bomb_only(folder: Path) -> None:
    (folder / "bomb.png").write_bytes(bomb_png())


def _nonimage_only(folder: Path) -> None:
    (folder / "readme.txt").write_text("hello\n")
    (folder / "data.csv").write_text("a,b\n1,2\n")


def _bad_yaml(scratch: Path) -> Path:
    path = scratch / "bad.yaml"
    path.write_text("train:\n  lr: [1, 2\n")
    return path


def _a_file(scratch: Path) -> Path:
    path = scratch / "a_file"
    path.write_text("x")
    return path


def _corrupt_checkpoint(scratch: Path, shared: dict) -> list[str]:
    run = scratch / "out"
    shutil.copytree(shared["ae_run"], run)
    latest = sorted((run / "checkpoints").glob("step-*"))[-1]
    model = latest / "model.safetensors"
    model.write_bytes(model.read_bytes()[:100])
    return _ae(scratch, "--resume", "--max-steps", "4")


def _mismatched_resume(scratch: Path, shared: dict) -> list[str]:
    shutil.copytree(shared["ae_run"], scratch / "out")
    return _ae(scratch, "--resume", "--max-steps", "4", "--set", "model.codebook_size=64")


def _nan_after_checkpoint(scratch: Path, shared: dict) -> list[str]:
    shutil.copytree(shared["ae_run"], scratch / "out")
    return _ae(scratch, "--resume", "--max-steps", "40", "--set", "train.lr=1e30")


def _pipeline_with_pickle_weights(scratch: Path, shared: dict) -> Path:
    """A copy of a pipeline folder whose UNet weights are a pickle (.bin) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    pipe = scratch / "pipe_bin"
    shutil.copytree(shared["pipeline"], pipe)
    for st in (pipe / "unet").glob("*.safetensors"):
        torch.save(load_file(str(st)), st.with_suffix(".bin"))
        st.unlink()
    return pipe


def _vqvae_with_pickle_weights(scratch: Path, shared: dict) -> Path:
    import torch
    from safetensors.torch import load_file

    ae = scratch / "ae_bin"
    shutil.copytree(Path(shared["ae_run"]) / "vqvae", ae)
    for st in ae.glob("*.safetensors"):
        torch.save(load_file(str(st)), st.with_suffix(".bin"))
        st.unlink()
    return ae


def _ldm(scratch: Path, shared: dict, *extra: str, autoencoder: Path | str | None = None, data: str | None = None) -> list[str]:
    if data is None:
        data = scratch / "images"
        if not Path(data).exists():
            write_good_images(Path(data), 12)
    ae = shared["ae_run"] if autoencoder is None else autoencoder
    return ["train-diffusion", "--autoencoder", str(ae), "--data", str(data), "--out", str(scratch / "out"), *TINY_LDM, *extra]


def _text(scratch: Path, shared: dict, data: str | Path, out: Path | None = None) -> list[str]:
    """A tiny text-to-image run (``--config tiny-text``: it reads captions) on ``data``."""
    return ["train-diffusion", "--config", "tiny-text", "--autoencoder", str(shared["ae_run"]), "--data", str(data),
            "--out", str(out or scratch / "out"), "--max-steps", "2", "--set", "train.progress=false"]


def _captioned(scratch: Path, lines: list[str]) -> Path:
    """4 good images and a metadata.jsonl of ``lines``."""
    folder = scratch / "images"
    write_good_images(folder, 4)
    (folder / "metadata.jsonl").write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    return folder


def _rgb_vqmodel(scratch: Path) -> Path:
    """A VQModel folder of 3-channel images (the tiny data is grayscale)."""
    from vqldm.autoencoder.model import AutoencoderModelConfig, build_vqmodel

    folder = scratch / "rgb_vqmodel"
    build_vqmodel(AutoencoderModelConfig(block_out_channels=[8, 16], latent_channels=3, codebook_size=32,
                                         norm_num_groups=4), 16, 3).save_pretrained(folder, safe_serialization=True)
    return folder


def _unet_for_other_latents(scratch: Path) -> Path:
    """A UNet2DModel folder for 4x8x8 latents (the tiny autoencoder makes 3x8x8)."""
    from diffusers import UNet2DModel

    folder = scratch / "unet4"
    UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), norm_num_groups=8,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                layers_per_block=1).save_pretrained(folder, safe_serialization=True)
    return folder


def _prompt_file(scratch: Path, text: str) -> Path:
    path = scratch / "prompts.txt"
    scratch.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _hf_without_captions(scratch: Path) -> str:
    """A save_to_disk dataset of images and a label column, no text column."""
    import datasets as hf

    images = [Image.open(p) for p in write_good_images(scratch / "png", 4)]
    features = hf.Features({"image": hf.Image(), "label": hf.ClassLabel(names=["a", "b"])})
    hf.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=features).save_to_disk(str(scratch / "ds"))
    return f"hf:{scratch / 'ds'}"


def _gen(scratch: Path, shared: dict, *extra: str, model: Path | str | None = None, out: str | None = None) -> list[str]:
    model = shared["pipeline"] if model is None else model
    out = str(scratch / "out" / "grid.png") if out is None else out
    return ["generate", "--model", str(model), "--out", out, "--num-images", "2", "--steps", "2", "--no-progress", *extra]


def _prior(scratch: Path, shared: dict, *extra: str, kind: str = "masked") -> list[str]:
    return ["train-prior", "--kind", kind, "--autoencoder", str(shared["ae_run"]), "--data", str(scratch / "none"),
            "--out", str(scratch / "out"), "--config", "tiny", "--max-steps", "2", "--set", "train.progress=false", *extra]


def _prior_with_other_vqvae(scratch: Path, shared: dict) -> Path:
    """A copy of the shared prior folder whose vqvae codebook was changed after training."""
    import torch
    from diffusers import VQModel

    folder = scratch / "prior"
    shutil.copytree(shared["prior"], folder)
    vq = VQModel.from_pretrained(folder / "vqvae")
    with torch.no_grad():
        vq.quantize.embedding.weight.add_(0.01)
    vq.save_pretrained(folder / "vqvae", safe_serialization=True)
    return folder


def _truncated_shard(scratch: Path) -> str:
    """Shards written by `vqldm shard`, the first cut inside its second image (its size no longer matches
    shards.json, so it is scanned; cutting in half could leave only the tar's zero padding out)."""
    write_good_images(scratch / "images", 12)
    run_cli(["shard", str(scratch / "images"), str(scratch / "shards"), "--shard-size", "4", "--no-progress"])
    first = scratch / "shards" / "shard-000000.tar"
    first.write_bytes(first.read_bytes()[:1500])
    return f"shards:{scratch / 'shards'}"


AE, LDM, PRIOR, GEN, CONVERT, SHARD = "train-autoencoder", "train-diffusion", "train-prior", "generate", "convert", "shard"
CASES: list[Case] = [
    # ------------------------------------------------------------------ train-autoencoder: data
    Case(AE, "data path does not exist", lambda s, _: _ae(s, data=s / "missing")),
    Case(AE, "data path is a file, not a folder", lambda s, _: _ae(s, data=_a_file(s))),
    Case(AE, "empty data folder", lambda s, _: _ae(s, data=_folder_with(s, lambda f: None))),
    Case(AE, "folder of non-image files only", lambda s, _: _ae(s, data=_folder_with(s, _nonimage_only))),
    Case(AE, "folder of broken images only (zero-byte, truncated PNG/JPEG, garbage, scrambled, bomb, dangling link)",
         lambda s, _: _ae(s, data=_folder_with(s, _broken_only))),
    Case(AE, "decompression bomb (PNG header claims 20000x20000) only", lambda s, _: _ae(s, data=_folder_with(s, _bomb_only))),
    Case(AE, "good images mixed with every kind of broken file (trains; skipped files listed)",
         lambda s, _: _ae(s, data=_folder_with(s, _mixed)), expect_exit=0),
    Case(AE, "odd modes: 1, P, P+transparency, LA, RGBA, CMYK, 16-bit, int/float TIFF, WebP (trains)",
         lambda s, _: _ae(s, data=_folder_with(s, write_odd_mode_images)), expect_exit=0),
    Case(AE, "--labels folders without class subfolders", lambda s, _: _ae(s, "--labels", "folders")),
    Case(AE, "Hugging Face dataset that does not exist (hf:PATH, offline)", lambda s, _: _ae(s, data=f"hf:{s / 'no-such-dataset'}")),
    Case(AE, "hf: with no name", lambda s, _: _ae(s, data="hf:")),
    Case(AE, "shards: a folder without .tar files", lambda s, _: _ae(s, data=f"shards:{write_good_images(s / 'images', 4)[0].parent}")),
    Case(AE, "shards: a brace pattern that matches no shard", lambda s, _: _ae(s, data=f"shards:{s}/train-{{000000..000009}}.tar")),
    Case(AE, "shards: a truncated tar shard", lambda s, _: _ae(s, data=_truncated_shard(s))),
    Case(AE, "shards: with nothing after it", lambda s, _: _ae(s, data="shards:")),
    Case(AE, "negative worker count (--set data.num_workers=-1)", lambda s, _: _ae(s, "--set", "data.num_workers=-1")),
    Case(AE, "--config auto on a folder of 3 images",
         lambda s, _: ["train-autoencoder", "--config", "auto", "--data", str(_folder_with(s, lambda f: write_good_images(f, 3))),
                       "--out", str(s / "out")]),
    # ------------------------------------------------------------------ train-autoencoder: config
    Case(AE, "unknown config key (--set model.codebook_sizes=8)", lambda s, _: _ae(s, "--set", "model.codebook_sizes=8")),
    Case(AE, "wrong config type (--set train.lr=fast)", lambda s, _: _ae(s, "--set", "train.lr=fast")),
    Case(AE, "residual quantizer with one stage (--set quantizer.kind=residual --set quantizer.stages=1)",
         lambda s, _: _ae(s, "--set", "quantizer.kind=residual", "--set", "quantizer.stages=1")),
    Case(AE, "hierarchy deeper than the latent grid (--set quantizer.kind=hierarchical --set quantizer.stages=5)",
         lambda s, _: _ae(s, "--set", "quantizer.kind=hierarchical", "--set", "quantizer.stages=5")),
    Case(AE, "PatchGAN deeper than the images (--set loss.disc_weight=0.5 --set loss.disc_layers=4)",
         lambda s, _: _ae(s, "--set", "loss.disc_weight=0.5", "--set", "loss.disc_layers=4")),
    Case(AE, "wrong config type (--set model.block_out_channels=64)", lambda s, _: _ae(s, "--set", "model.block_out_channels=64")),
    Case(AE, "invalid value (--set data.channels=2)", lambda s, _: _ae(s, "--set", "data.channels=2")),
    Case(AE, "malformed --set (no '=')", lambda s, _: _ae(s, "--set", "train.lr")),
    Case(AE, "config file does not exist", lambda s, _: _ae(s, "--config", str(s / "nope.yaml"))),
    Case(AE, "config file is not valid YAML", lambda s, _: _ae(s, "--config", str(_bad_yaml(s)))),
    Case(AE, "impossible size: image size 17 not divisible by the downsampling factor 2",
         lambda s, _: _ae(s, "--set", "data.image_size=17")),
    Case(AE, "--max-steps 0", lambda s, _: _ae(s, "--max-steps", "0")),
    # ------------------------------------------------------------------ train-autoencoder: output and resume
    Case(AE, "--out is an existing file", lambda s, _: ["train-autoencoder", "--data", str(write_good_images(s / "images", 4)[0].parent),
                                                        "--out", str(_a_file(s)), *TINY_AE]),
    Case(AE, "--out inside a file (not writable)", lambda s, _: _ae(s, "--out", str(_a_file(s) / "run"))),
    Case(AE, "--out already holds a run, no --resume", lambda s, sh: shutil.copytree(sh["ae_run"], s / "out") and _ae(s),
         needs=("ae_run",)),
    Case(AE, "--resume with a different config (codebook size)", _mismatched_resume, needs=("ae_run",)),
    Case(AE, "--resume from a truncated checkpoint file", _corrupt_checkpoint, needs=("ae_run",)),
    Case(AE, "NaN: --resume with an absurd learning rate (1e30)", _nan_after_checkpoint, needs=("ae_run",),
         expect_in_stderr="at step"),
    Case(AE, "--init of a VQModel of other image channels", lambda s, _: _ae(s, "--init", str(_rgb_vqmodel(s))),
         flags=("--init",), expect_in_stderr="is an autoencoder of 3-channel images but the data has 1 channel"),
    Case(AE, "disk fills up while saving (file-size limit 100 kB)", lambda s, _: _ae(s, "--set", "train.checkpoint_every=1"),
         fsize_limit=100_000, expect_in_stderr="could not write"),
    # ------------------------------------------------------------------ convert (safe loading)
    Case(CONVERT, "pickle checkpoint without --trust-pickle", lambda s, _: ["convert", str(write_pickle(s / "model.pt"))]),
    Case(CONVERT, "pickle that runs code when loaded (--trust-pickle; weights_only refuses it)",
         lambda s, _: ["convert", str(write_pickle(s / "evil.ckpt", malicious=True, marker=s / "PWNED")), str(s / "out" / "x.safetensors"),
                       "--trust-pickle"]),
    Case(CONVERT, "source file does not exist", lambda s, _: ["convert", str(s / "missing.bin"), "--trust-pickle"]),
    Case(CONVERT, "plain state dict with --trust-pickle (converts)",
         lambda s, _: ["convert", str(write_pickle(s / "model.pt")), str(s / "out" / "model.safetensors"), "--trust-pickle"],
         expect_exit=0),
    # ------------------------------------------------------------------ shard
    Case(SHARD, "OUT is not empty", lambda s, _: ["shard", str(write_good_images(s / "images", 4)[0].parent), str(_a_file(s).parent),
                                                  "--no-progress"]),
    Case(SHARD, "--shard-size lots", lambda s, _: ["shard", str(write_good_images(s / "images", 4)[0].parent), str(s / "out"),
                                                   "--shard-size", "lots"], flags=("--shard-size",)),
    Case(SHARD, "--labels folders on a folder without subfolders",
         lambda s, _: ["shard", str(write_good_images(s / "images", 4)[0].parent), str(s / "out"), "--labels", "folders",
                       "--no-progress"]),
    # ------------------------------------------------------------------ train-diffusion
    Case(LDM, "--autoencoder path does not exist", lambda s, sh: _ldm(s, sh, autoencoder=s / "missing"), needs=("ae_run",)),
    Case(LDM, "--autoencoder is a pickle checkpoint (.ckpt)", lambda s, sh: _ldm(s, sh, autoencoder=write_pickle(s / "ae.ckpt")),
         needs=("ae_run",)),
    Case(LDM, "--autoencoder VQModel folder with pickle (.bin) weights", lambda s, sh: _ldm(s, sh, autoencoder=_vqvae_with_pickle_weights(s, sh)),
         needs=("ae_run",)),
    Case(LDM, "--autoencoder folder without a model", lambda s, sh: _ldm(s, sh, autoencoder=(s / "empty_ae").mkdir() or s / "empty_ae"),
         needs=("ae_run",)),
    Case(LDM, "data path does not exist", lambda s, sh: _ldm(s, sh, data=str(s / "missing")), needs=("ae_run",)),
    Case(LDM, "folder of broken images only", lambda s, sh: _ldm(s, sh, data=str(_folder_with(s, _broken_only))), needs=("ae_run",)),
    Case(LDM, "unknown config key", lambda s, sh: _ldm(s, sh, "--set", "unet.colour=red"), needs=("ae_run",)),
    Case(LDM, "wrong config type (--set train.lr=fast)", lambda s, sh: _ldm(s, sh, "--set", "train.lr=fast"), needs=("ae_run",)),
    Case(LDM, "mismatched models: data.image_size 32 for a 16-pixel autoencoder",
         lambda s, sh: _ldm(s, sh, "--set", "data.image_size=32"), needs=("ae_run",)),
    Case(LDM, "--init of a UNet for other latents", lambda s, sh: _ldm(s, sh, "--init", str(_unet_for_other_latents(s))),
         flags=("--init",), needs=("ae_run",), expect_in_stderr="denoises 4x8x8 latents but the autoencoder makes 3x8x8 latents"),
    Case(LDM, "--out inside a file (not writable)", lambda s, sh: _ldm(s, sh, "--out", str(_a_file(s) / "run")), needs=("ae_run",)),
    Case(LDM, "text model: an image without a caption (metadata.jsonl names 3 of 4)",
         lambda s, sh: _text(s, sh, _captioned(s, [f'{{"file_name": "good_{i:03d}.png", "text": "a square"}}' for i in (0, 1, 3)])),
         needs=("ae_run",)),
    Case(LDM, "text model: a metadata.jsonl line that is not JSON",
         lambda s, sh: _text(s, sh, _captioned(s, ['{"file_name": "good_000.png", "text": "a square"}', "good_001.png,a square"])),
         needs=("ae_run",)),
    Case(LDM, "text model: a metadata.jsonl line whose text is not a string",
         lambda s, sh: _text(s, sh, _captioned(s, ['{"file_name": "good_000.png", "text": ["a", "square"]}'])), needs=("ae_run",)),
    Case(LDM, "text model: hf: dataset without a caption column", lambda s, sh: _text(s, sh, _hf_without_captions(s)), needs=("ae_run",)),
    Case(LDM, "text model: a named dataset (no captions)", lambda s, sh: _text(s, sh, "fashion-mnist"), needs=("ae_run",)),
    Case(LDM, "text model: unknown text encoder (text.encoder=no-such-org/no-such-encoder, offline)",
         lambda s, sh: _text(s, sh, _captioned(s, [f'{{"file_name": "good_{i:03d}.png", "text": "a square"}}' for i in range(4)]))
         + ["--set", "text.encoder=no-such-org/no-such-encoder"], needs=("ae_run",)),
    Case(LDM, "text model asked for classes too (model.class_conditional=true)",
         lambda s, sh: _text(s, sh, _captioned(s, [f'{{"file_name": "good_{i:03d}.png", "text": "a square"}}' for i in range(4)]))
         + ["--set", "model.class_conditional=true"], needs=("ae_run",)),
    # ------------------------------------------------------------------ generate
    Case(GEN, "--model path does not exist", lambda s, sh: _gen(s, sh, model=s / "missing"), flags=("--model",)),
    Case(GEN, "--model is a pickle checkpoint (.ckpt)", lambda s, sh: _gen(s, sh, model=write_pickle(s / "pipe.ckpt")), flags=("--model",)),
    Case(GEN, "--model folder without model_index.json", lambda s, sh: _gen(s, sh, model=(s / "empty").mkdir() or s / "empty"),
         flags=("--model",)),
    Case(GEN, "--model pipeline with pickle (.bin) UNet weights", lambda s, sh: _gen(s, sh, model=_pipeline_with_pickle_weights(s, sh)),
         flags=("--model",), needs=("pipeline",)),
    Case(GEN, "--model is an autoencoder run, not a pipeline", lambda s, sh: _gen(s, sh, model=sh["ae_run"]), flags=("--model",),
         needs=("ae_run",)),
    Case(GEN, "--num-images 0", lambda s, sh: _gen(s, sh, "--num-images", "0"), flags=("--model", "--num-images"), needs=("pipeline",)),
    Case(GEN, "--steps 0", lambda s, sh: _gen(s, sh, "--steps", "0"), flags=("--model", "--steps"), needs=("pipeline",)),
    Case(GEN, "--scheduler unknown", lambda s, sh: _gen(s, sh, "--scheduler", "magic"), flags=("--model", "--scheduler"),
         needs=("pipeline",)),
    Case(GEN, "--scheduler-option without =", lambda s, sh: _gen(s, sh, "--scheduler-option", "trailing"),
         flags=("--model", "--scheduler-option"), needs=("pipeline",)),
    Case(GEN, "--scheduler-option the scheduler does not have", lambda s, sh: _gen(s, sh, "--scheduler-option", "nonsense=1"),
         flags=("--model", "--scheduler-option"), needs=("pipeline",)),
    Case(GEN, "--scheduler-option value the scheduler refuses", lambda s, sh: _gen(s, sh, "--scheduler-option", "timestep_spacing=sideways"),
         flags=("--model", "--scheduler-option"), needs=("pipeline",)),
    Case(GEN, "--prompt on a class-conditional model", lambda s, sh: _gen(s, sh, "--prompt", "a square"),
         flags=("--model", "--prompt"), needs=("pipeline",)),
    Case(GEN, "--class on a text-to-image model", lambda s, sh: _gen(s, sh, "--class", "1", model=sh["text_pipeline"]),
         flags=("--model", "--prompt"), needs=("text_pipeline",)),
    Case(GEN, "--prompt-file with an empty line", lambda s, sh: _gen(s, sh, "--prompt-file", str(_prompt_file(s, "a square\n\na disc\n")),
                                                                    model=sh["text_pipeline"]),
         flags=("--model", "--prompt-file"), needs=("text_pipeline",)),
    Case(GEN, "--prompt-file does not exist", lambda s, sh: _gen(s, sh, "--prompt-file", str(s / "missing.txt"), model=sh["text_pipeline"]),
         flags=("--model", "--prompt-file"), needs=("text_pipeline",)),
    Case(GEN, "--class out of range (99)", lambda s, sh: _gen(s, sh, "--class", "99"), flags=("--model", "--class"), needs=("pipeline",)),
    Case(GEN, "--out inside a file (not writable)", lambda s, sh: _gen(s, sh, out=str(_a_file(s) / "grid.png")), flags=("--model", "--out"),
         needs=("pipeline",)),
    Case(GEN, "--out with an unknown image format (.gif)", lambda s, sh: _gen(s, sh, out=str(s / "grid.gif")), flags=("--model", "--out"),
         needs=("pipeline",)),
    Case(GEN, "--num-images 100000000 into one grid", lambda s, sh: _gen(s, sh, "--num-images", "100000000"),
         flags=("--model", "--num-images"), needs=("pipeline",)),
    Case(GEN, "--guidance nan", lambda s, sh: _gen(s, sh, "--guidance", "nan"), flags=("--model", "--guidance"), needs=("pipeline",)),
    Case(GEN, "--resume with a grid --out", lambda s, sh: _gen(s, sh, "--resume"), flags=("--model", "--resume"), needs=("pipeline",)),
    Case(GEN, "--resume into a folder of images made with another seed",
         lambda s, sh: (run_cli(_gen(s, sh, out=str(s / "imgs") + "/")), _gen(s, sh, "--seed", "5", "--resume", out=str(s / "imgs") + "/"))[1],
         flags=("--model", "--resume"), needs=("pipeline",)),
    Case(GEN, "--steps 100000 (more than the scheduler's 1000 training timesteps)", lambda s, sh: _gen(s, sh, "--steps", "100000"),
         flags=("--model", "--steps"), needs=("pipeline",), expect_in_stderr="timesteps"),
    Case(GEN, "--num-images 10000000000 into a folder (more than the disk holds)",
         lambda s, sh: _gen(s, sh, "--num-images", "10000000000", out=str(s / "out") + "/"),
         flags=("--model", "--num-images"), needs=("pipeline",), expect_in_stderr="is free there"),
    Case(GEN, "--resume to 10001 images in a folder of 4-digit names (0000.png ...)",
         lambda s, sh: (run_cli(_gen(s, sh, out=str(s / "imgs") + "/")),
                        _gen(s, sh, "--num-images", "10001", "--resume", out=str(s / "imgs") + "/"))[1],
         flags=("--model", "--resume"), needs=("pipeline",), expect_in_stderr="5-digit file names"),
    Case(GEN, "--eta 2 (DDIM eta is 0..1)", lambda s, sh: _gen(s, sh, "--eta", "2"), flags=("--model", "--eta"), needs=("pipeline",)),
    Case(GEN, "--freeze-unet (the removed name of --unet-path frozen)", lambda s, sh: _gen(s, sh, "--freeze-unet"),
         flags=("--model",), needs=("pipeline",)),
    # ------------------------------------------------------------------ train-prior / priors in generate
    Case(PRIOR, "--kind unknown", lambda s, sh: _prior(s, sh, kind="diffusion"), flags=("--kind",), needs=("ae_run",)),
    Case(PRIOR, "--max-steps 0", lambda s, sh: _prior(s, sh, "--max-steps", "0"), flags=("--max-steps",), needs=("ae_run",)),
    Case(GEN, "prior folder whose vqvae codebook changed after training", lambda s, sh: _gen(s, sh, model=_prior_with_other_vqvae(s, sh)),
         flags=("--model",), needs=("prior",)),
    Case(GEN, "--scheduler on a prior", lambda s, sh: _gen(s, sh, "--scheduler", "ddim", model=sh["prior"]), flags=("--model", "--scheduler"),
         needs=("prior",)),
    Case(GEN, "--class out of range (99) on a prior", lambda s, sh: _gen(s, sh, "--class", "99", model=sh["prior"]),
         flags=("--model", "--class"), needs=("prior",)),
    Case(GEN, "--steps 100000 on a masked prior (more steps than codes)", lambda s, sh: _gen(s, sh, "--steps", "100000", model=sh["prior"]),
         flags=("--model", "--steps"), needs=("prior",), expect_in_stderr="codes"),
    Case(GEN, "--eta on a prior (a DDIM option)", lambda s, sh: _gen(s, sh, "--eta", "0.5", model=sh["prior"]),
         flags=("--model", "--eta"), needs=("prior",)),
]


# ----------------------------------------------------------------------------- running
def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    return env


def run_cli(argv: list[str], fsize_limit: int | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    def limit():
        if fsize_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    return subprocess.run([sys.executable, "-m", "vqldm", *argv], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit if fsize_limit is not None else None)


_HELP_CACHE: dict[str, str | None] = {}


def command_help(command: str) -> str | None:
    """``vqldm COMMAND --help`` text, or None when the command does not exist."""
    if command not in _HELP_CACHE:
        proc = run_cli([command, "--help"], timeout=300)
        _HELP_CACHE[command] = proc.stdout if proc.returncode == 0 else None
    return _HELP_CACHE[command]


NOT_IMPLEMENTED = re.compile(r"not implemented|ModuleNotFoundError|No module named|unknown COMMAND", re.I)


def _left_behind(out: Path) -> str:
    if not out.exists():
        return "nothing"
    entries = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    partial = [e for e in entries if ".tmp-" in e or ".tmp." in e]
    if partial:
        return "HALF-WRITTEN: " + ", ".join(partial[:3])
    if not entries:
        return "empty folder"
    top = sorted({e.split("/")[0] for e in entries})
    return "complete files: " + ", ".join(top[:6]) + (" ..." if len(top) > 6 else "")


def _tidy(text: str, scratch: Path) -> str:
    text = text.replace(str(scratch), "SCRATCH").replace(str(REPO), "REPO")
    text = re.sub(r"/tmp/[\w.\-/]*?bad_inputs_\w+", "SCRATCH", text)
    return text.strip()


def build_shared(kind: str, root: Path, shared: dict) -> str | None:
    """Build a shared artefact once; returns None on success or why it could not be built."""
    if kind in shared:
        return shared.get(f"{kind}:failed")
    shared[kind] = None
    if kind == "ae_run":
        data = root / "shared_images"  # two classes, for the class-conditional tiny diffusion preset
        write_good_images(data / "class_a", 8, seed=1)
        write_good_images(data / "class_b", 8, seed=2)
        out = root / "shared_ae"
        proc = run_cli(["train-autoencoder", "--data", str(data), "--out", str(out), *TINY_AE,
                        "--set", "train.checkpoint_every=1"])
        if proc.returncode == 0:
            shared[kind] = str(out)
            return None
        why = "the tiny autoencoder run failed: " + _last_line(proc.stderr, root)
    elif kind == "pipeline":
        why = build_shared("ae_run", root, shared)
        if why is None and command_help(LDM) is None:
            why = "`vqldm train-diffusion` is not implemented yet"
        if why is None:
            out = root / "shared_ldm"
            proc = run_cli(["train-diffusion", "--autoencoder", shared["ae_run"], "--data", str(root / "shared_images"),
                            "--labels", "folders", "--out", str(out), *TINY_LDM])
            if proc.returncode == 0 and (out / "pipeline" / "model_index.json").is_file():
                shared[kind] = str(out / "pipeline")
                return None
            why = "the tiny pipeline could not be trained: " + _last_line(proc.stderr, root)
    elif kind == "text_pipeline":
        why = build_shared("ae_run", root, shared)
        if why is None:
            data = _captioned(root / "shared_text", [f'{{"file_name": "good_{i:03d}.png", "text": "a square"}}' for i in range(4)])
            out = root / "shared_text_ldm"
            proc = run_cli(_text(root / "shared_text", shared, data, out=out))
            if proc.returncode == 0 and (out / "pipeline" / "model_index.json").is_file():
                shared[kind] = str(out / "pipeline")
                return None
            why = "the tiny text pipeline could not be trained: " + _last_line(proc.stderr, root)
    elif kind == "prior":
        why = build_shared("ae_run", root, shared)
        if why is None:
            out = root / "shared_prior"
            proc = run_cli(["train-prior", "--kind", "masked", "--autoencoder", shared["ae_run"], "--data", str(root / "shared_images"),
                            "--labels", "folders", "--out", str(out), "--config", "tiny", "--max-steps", "2", "--set", "train.progress=false"])
            if proc.returncode == 0 and (out / "prior" / "vqldm.json").is_file():
                shared[kind] = str(out / "prior")
                return None
            why = "the tiny prior could not be trained: " + _last_line(proc.stderr, root)
    else:
        raise ValueError(kind)
    shared[f"{kind}:failed"] = why
    return why


def _last_line(text: str, scratch: Path) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return _tidy(lines[-1], scratch)[:200] if lines else "(no message)"


def run_case(case: Case, root: Path, shared: dict) -> Result:
    help_text = command_help(case.command)
    if help_text is None:
        return Result(case, f"not run: `vqldm {case.command}` is not implemented yet")
    missing = [f for f in case.flags if f not in help_text]
    if missing:
        return Result(case, f"not run: `vqldm {case.command}` has no {', '.join(missing)} yet")
    for kind in case.needs:
        why = build_shared(kind, root, shared)
        if why:
            return Result(case, f"not run: {why}")
    scratch = Path(tempfile.mkdtemp(prefix="case_", dir=root))
    argv = case.setup(scratch, shared)
    proc = run_cli(argv, fsize_limit=case.fsize_limit)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    result = Result(case, "ran", proc.returncode, _tidy(last, scratch), "Traceback (most recent call last)" in proc.stderr,
                    _left_behind(scratch / "out"))
    if proc.returncode != 0 and NOT_IMPLEMENTED.search(proc.stderr):
        result.status = f"not run: `vqldm {case.command}` answered: {_tidy(last, scratch)[:120]}"
        return result
    error_lines = [ln for ln in lines if ln.startswith("vqldm: error:")]
    checks = [proc.returncode == case.expect_exit, not result.traceback]
    if case.expect_exit == 2:
        checks += [last.startswith("vqldm: error:"), len(error_lines) == 1, not result.left_behind.startswith("HALF")]
    if case.expect_in_stderr:
        checks.append(case.expect_in_stderr in last)
    if case.name.startswith("pickle that runs code"):
        pwned = (scratch / "PWNED").exists()
        checks.append(not pwned)
        result.notes.append("payload ran!" if pwned else "payload not run")
    if proc.returncode == 0:
        out_lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        result.last_line = _tidy(out_lines[-1], scratch) if out_lines else ""
    if case.expect_exit == 0 and case.command == AE:
        skipped = scratch / "out" / "skipped_files.json"
        if skipped.is_file():
            import json

            result.notes.append(f"{len(json.loads(skipped.read_text()))} files listed in skipped_files.json")
            warn = [ln for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.startswith("warning: skipped")]
            if warn:
                result.last_line = _tidy(warn[0], scratch)
    result.ok = all(checks)
    return result


# ----------------------------------------------------------------------------- report
def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: list[Result], argv: list[str]) -> str:
    ran = [r for r in results if r.status == "ran"]
    not_run = [r for r in results if r.status != "ran"]
    lines = [
        "# Bad inputs: what vqldm says",
        "",
        "Generated by `python benchmarks/bad_inputs.py" + (" " + " ".join(argv) if argv else "") + "`, which runs each case",
        "through the real command line (`python -m vqldm ...`) in a subprocess. Do not edit by hand.",
        "",
        "*exit*: the exit code (2 = user error). *vqldm says*: the last line of stderr (for runs that succeed:",
        "the last line of stdout, or the warning line about skipped files). *left in --out*: what the failed command left in its output",
        "folder (nothing, or only complete files; never a half-written `.tmp-` file). *ok*: exit code as",
        "expected, exactly one `vqldm: error:` line, no traceback, nothing half-written.",
        "",
        "| # | command | bad input | exit | vqldm says | left in --out | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(ran, 1):
        says = r.last_line + (f" ({'; '.join(r.notes)})" if r.notes else "")
        lines.append(f"| {i} | `{r.case.command}` | {_md(r.case.name)} | {r.exit_code} | {_md(says)} | {_md(r.left_behind)} | "
                     f"{'yes' if r.ok else '**NO**'} |")
    lines += ["", f"{sum(r.ok for r in ran)} of {len(ran)} cases as expected."]
    if not_run:
        lines += ["", "## Not run", "", "Cases whose command or option is not implemented yet, or whose prerequisite could not be",
                  "built (each runs automatically once it can):", ""]
        lines += [f"- `{r.case.command}`: {_md(r.case.name)} — {_md(r.status.removeprefix('not run: '))}" for r in not_run]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="Markdown file to write (default docs/bad_inputs.md)")
    ap.add_argument("--only", default=None, help="run only cases whose command or name contains this text")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)
    cases = [c for c in CASES if not args.only or args.only in c.command or args.only in c.name]
    if args.list:
        for c in cases:
            print(f"{c.command:18s} {c.name}")
        return 0
    root = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    shared: dict = {}
    results = []
    try:
        for i, case in enumerate(cases, 1):
            print(f"[{i}/{len(cases)}] {case.command}: {case.name}", file=sys.stderr, flush=True)
            results.append(run_case(case, root, shared))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"scratch kept in {root}", file=sys.stderr)
    shown = ["--only", args.only] if args.only else []
    table = render(results, shown)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)
    return 0 if all(r.ok for r in results if r.status == "ran") else 1


if __name__ == "__main__":
    sys.exit(main())
