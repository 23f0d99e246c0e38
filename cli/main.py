"""The ``vqldm`` command line. User errors, argparse's included, print one line on stderr and exit with code 2.

Several processes: start the same command under a standard launcher, e.g.
``torchrun --standalone --nproc_per_node 2 -m vqldm train-diffusion ...`` (CPU workers form a gloo
group) or ``accelerate launch --multi_gpu --num_processes 2 -m vqldm train-diffusion ...`` (GPUs).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .argtypes import file_stem, positive_int, shard_size


class ArgumentParser(argparse.ArgumentParser):
    """argparse with vqldm's error convention: one line ``vqldm: error: ...`` and exit code 2, no usage block.

    A bad value reads as its flag: "--steps must be >= 1, got 0", "unknown --scheduler 'x'; choose one of ...".
    """

    def error(self, message: str):
        from ..plumbing.errors import UserError

        raise UserError(flag_words(message))


def flag_words(message: str) -> str:
    """argparse's "argument --x: ..." as a sentence about ``--x``."""
    m = re.fullmatch(r"argument (\S+?)(?:/\S+)?: (.*)", message, flags=re.S)
    if not m:
        return message
    flag, text = m.groups()
    choice = re.fullmatch(r"invalid choice: (.+?) \(choose from (.*)\)", text, flags=re.S)
    if choice:
        return f"unknown {flag} {choice.group(1)}; choose one of {choice.group(2).replace(chr(39), '')}"
    return f"{flag} {text}" if text.startswith("must ") else f"{flag}: {text}"


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True,
                   help="YAML config path, a preset name (e.g. fashion-mnist), or auto: sized for the data and device")
    p.add_argument("--data", help="image folder, hf:NAME, shards:DIR or shards:PATTERN (tar shards), or a named dataset "
                   "(fashion-mnist, mnist, cifar10)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<command>)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="override train.max_steps")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--labels", choices=["none", "folders"], default=None, help="class labels from first-level subfolders")


def _add_init_arg(p: argparse.ArgumentParser, component: str) -> None:
    p.add_argument("--init", default=None, metavar="FOLDER_OR_HUB_NAME",
                   help=f"start from published weights: a {component} folder (config.json + safetensors), a pipeline "
                        f"folder (its {component}/), a vqldm run folder, or a Hugging Face Hub repo id (owner/name); the "
                        f"architecture is the init's, training settings the config's")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """vqldm's parser. ``argv`` (the arguments about to be parsed): when its command is neither ``generate``
    nor ``evaluate``, those two get placeholder subparsers, because their arguments' choices come from the
    pipelines (torch, diffusers: seconds to import) and ``vqldm --help`` should not wait for them."""
    from ..priors.kinds import KINDS

    parser = ArgumentParser(prog="vqldm", description="Latent diffusion on a VQ-compressed space.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train-autoencoder", help="train the VQ autoencoder (stage 1)")
    _add_train_args(p)
    _add_init_arg(p, "VQModel")

    p = sub.add_parser("convert", help="convert a trusted pickle checkpoint (.bin/.ckpt/.pt) to safetensors; with --config, "
                       "a taming/CompVis VQ checkpoint to a diffusers VQModel folder")
    p.add_argument("src")
    p.add_argument("dst", nargs="?", default=None,
                   help="output: a .safetensors file (default: beside SRC); with --config, a new VQModel folder (default: SRC without its suffix)")
    p.add_argument("--trust-pickle", action="store_true", help="required: confirms you trust the file's source")
    p.add_argument("--config", default=None, metavar="MODEL_YAML",
                   help="the taming-transformers / latent-diffusion YAML of the VQ model (model.params.ddconfig, n_embed, embed_dim)")

    p = sub.add_parser("train-diffusion", help="train the latent diffusion UNet (stage 2)")
    _add_train_args(p)
    p.add_argument("--autoencoder", required=True, help="autoencoder run folder (holding vqvae/) or a VQModel folder")
    _add_init_arg(p, "UNet2DModel")

    p = sub.add_parser("train-prior", help="train a masked or autoregressive prior over the autoencoder's codes (stage 2, discrete)")
    p.add_argument("--kind", required=True, choices=KINDS, metavar="masked|autoregressive",
                   help="masked: bidirectional, parallel decoding (MaskGIT); autoregressive: one code at a time in raster order")
    _add_train_args(p)
    p.add_argument("--autoencoder", required=True, help="autoencoder run folder (holding vqvae/) or a VQModel folder")

    p = sub.add_parser("shard", help="write an image folder as webdataset tar shards (train on them with --data shards:OUT)")
    p.add_argument("folder", help="image folder (indexed as for --data FOLDER: broken files are skipped and reported)")
    p.add_argument("out", help="new or empty folder for the shards and their index, shards.json")
    p.add_argument("--labels", choices=["none", "folders"], default="none",
                   help="write each image's first-level subfolder as its class (a .cls member; names in shards.json)")
    p.add_argument("--shard-size", type=shard_size, default="256MB", metavar="N|SIZE",
                   help="images per shard, or a target size such as 256MB or 1GB (default 256MB): shards that large are "
                        "read at disk/network speed and are few enough files, yet a dataset still gives enough of them to deal "
                        "to every process (each reads whole shards: you need at least one per process)")
    p.add_argument("--prefix", type=file_stem, default="shard", help="shard file names: PREFIX-000000.tar, ... (default shard)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    # generate / evaluate own their arguments (cli/generate.py, cli/evaluate.py)
    command = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    full = argv is None or command in ("generate", "evaluate")
    p = sub.add_parser("generate", help="generate images with a pipeline or prior folder (default: the shipped model)")
    if full:
        from . import generate

        generate.add_arguments(p)
    p = sub.add_parser("evaluate", help="reconstruction, codebook and generation metrics, with plots")
    if full:
        from . import evaluate

        evaluate.add_arguments(p)
    return parser


def _overrides(args) -> list[str]:
    extra = list(args.overrides)
    if args.labels:
        extra.append(f"data.labels={args.labels}")
    return extra


def _streaming(args) -> bool:
    """Whether the overrides ask for ``data.streaming`` (so ``--config auto`` describes the stream, not a download)."""
    import yaml

    values = [o.split("=", 1)[1] for o in args.overrides if o.split("=", 1)[0].strip() == "data.streaming" and "=" in o]
    return bool(values) and yaml.safe_load(values[-1]) is True


def _say(line: str) -> None:
    """The auto-config line, once: on the main process of a launcher's group."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)


def _check_max_steps(args, cfg) -> None:
    """--max-steps against the config: runs end on an optimizer step (argparse has checked it is >= 1)."""
    from ..plumbing.errors import UserError

    k = cfg.train.grad_accumulation
    if args.max_steps is not None and args.max_steps % k:
        raise UserError(f"--max-steps {args.max_steps} is not a multiple of train.grad_accumulation ({k}); "
                        f"runs end on an optimizer step, pass a multiple of {k}")


def _resume_init(args, out: str) -> None:
    """``--resume`` of a run that started from ``--init``: its checkpoints record the init, so the model is
    built the same way again without repeating the flag."""
    import json

    from ..plumbing.checkpoint import latest_checkpoint

    if not args.resume or args.init is not None:
        return
    ckpt = latest_checkpoint(out) if os.path.isdir(out) else None
    try:
        recorded = json.loads((ckpt / "state.json").read_text(encoding="utf-8")).get("init") if ckpt else None
    except (OSError, ValueError):
        recorded = None  # the trainer's resume says what is wrong with the checkpoint
    if recorded:
        args.init = recorded
        _say(f"resuming a run that started from --init {recorded}")


def _absolute_init(args) -> None:
    """A local --init path as an absolute path: the checkpoints record it for --resume from anywhere."""
    if getattr(args, "init", None) and os.path.exists(args.init):
        args.init = os.path.abspath(args.init)


def cmd_train_autoencoder(args) -> int:
    from ..autoencoder.config import auto_autoencoder_config, load_autoencoder_config
    from ..autoencoder.train import train_autoencoder
    from ..plumbing.autosize import AUTO, detect_device
    from ..data.summary import describe_data

    if args.config == AUTO:
        summary = describe_data(args.data, args.labels, streaming=_streaming(args))
        cfg, line = auto_autoencoder_config(summary, detect_device(), _overrides(args), args.max_steps)
        _say(line)
    else:
        cfg = load_autoencoder_config(args.config, _overrides(args))
    _check_max_steps(args, cfg)
    _absolute_init(args)
    _resume_init(args, args.out or "runs/autoencoder")
    train_autoencoder(cfg, args.out or "runs/autoencoder", data=args.data, max_steps=args.max_steps, resume=args.resume,
                      init=args.init)
    return 0


def cmd_train_diffusion(args) -> int:
    from ..diffusion.config import auto_diffusion_config
    from ..diffusion.config import load_diffusion_config
    from ..diffusion.train import train_diffusion
    from ..plumbing.autosize import AUTO, detect_device

    if args.config == AUTO:
        cfg, line = auto_diffusion_config(args.autoencoder, args.data, args.labels, detect_device(), args.overrides, args.max_steps)
        _say(line)
    else:
        cfg = load_diffusion_config(args.config, _overrides(args))
    _check_max_steps(args, cfg)
    _absolute_init(args)
    _resume_init(args, args.out or "runs/diffusion")
    train_diffusion(cfg, args.out or "runs/diffusion", autoencoder=args.autoencoder, data=args.data,
                    max_steps=args.max_steps, resume=args.resume, init=args.init)
    return 0


def cmd_train_prior(args) -> int:
    from ..plumbing.autosize import AUTO, detect_device
    from ..plumbing.errors import UserError
    from ..priors.config import auto_prior_config, load_prior_config
    from ..priors.train import train_prior

    if args.config == AUTO:
        cfg, line = auto_prior_config(args.autoencoder, args.data, args.labels, detect_device(), args.overrides, args.max_steps)
        _say(line)
    else:
        cfg = load_prior_config(args.config, _overrides(args))
    if cfg.model.kind not in (None, args.kind):
        raise UserError(f"--kind {args.kind} but the config says model.kind: {cfg.model.kind}; pass the kind the config was written for")
    cfg.model.kind = args.kind
    _check_max_steps(args, cfg)
    train_prior(cfg, args.out or f"runs/prior-{args.kind}", autoencoder=args.autoencoder, data=args.data,
                max_steps=args.max_steps, resume=args.resume)
    return 0


def cmd_shard(args) -> int:
    from ..data.shards import write_shards

    unit, value = args.shard_size
    print(write_shards(args.folder, args.out, labels=args.labels, prefix=args.prefix, progress=not args.no_progress,
                       **({"images_per_shard": value} if unit == "images" else {"shard_bytes": value})))
    return 0


def cmd_generate(args) -> int:
    from .generate import main as generate_main

    return generate_main(args)


def cmd_evaluate(args) -> int:
    from .evaluate import main as evaluate_main

    return evaluate_main(args)


def cmd_convert(args) -> int:
    from pathlib import Path

    from ..plumbing.checkpoint import convert_pickle_to_safetensors
    from ..plumbing.errors import UserError

    if not args.trust_pickle:
        raise UserError(f"converting {args.src!r} loads a pickle file; pass --trust-pickle if you trust its source")
    src = Path(args.src)
    if not src.is_file():
        raise UserError(f"{args.src!r} not found; check the path")
    if args.config is not None:
        from ..autoencoder.convert import convert_taming_checkpoint

        out = Path(args.dst) if args.dst else src.with_suffix("")
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{str(out)!r} already exists; pass a new output folder")
        model = convert_taming_checkpoint(src, args.config, out)
        c = model.config
        print(f"wrote a diffusers VQModel ({len(c.block_out_channels)} levels, {c.num_vq_embeddings} codes of "
              f"{c.vq_embed_dim or c.latent_channels} channels) to {out}; train from it with --init {out}")
        return 0
    dst = Path(args.dst) if args.dst else src.with_suffix(".safetensors")
    n = convert_pickle_to_safetensors(src, dst)
    print(f"wrote {n} tensors to {dst}")
    return 0


HANDLERS = {
    "train-autoencoder": cmd_train_autoencoder,
    "train-diffusion": cmd_train_diffusion,
    "train-prior": cmd_train_prior,
    "generate": cmd_generate,
    "evaluate": cmd_evaluate,
    "convert": cmd_convert,
    "shard": cmd_shard,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from ..plumbing.errors import ModelFolderError, UserError

    try:
        args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
        code = HANDLERS[args.command](args)
    except (UserError, ModelFolderError) as err:  # a model folder that cannot be loaded is the user's to fix too
        print(f"vqldm: error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 2)  # a training run stopped by a signal exits 128 + its number
    except KeyboardInterrupt:
        print("vqldm: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
