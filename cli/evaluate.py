"""``vqldm evaluate``: reconstruction, codebook and generation metrics, with a JSON report and PNG plots.

Modes (first positional argument)
* ``autoencoder``: PSNR, SSIM, LPIPS (when its weights are present), rFID (reconstructions vs originals in
  domain features), codebook usage %, perplexity, dead codes, and the per-class codebook report (codes per
  class, NMI between code indices and class labels).
* ``generation``: FID, KID, precision/recall between generated and held-out real images (sample counts
  stated with every figure), class accuracy for class-conditional models, and optionally FID vs sampling
  steps for several schedulers (``--steps-sweep 10,20,50``).
* ``train-features``: train the domain classifier whose penultimate layer gives the features.

Every FD / KID comes with its calibration (``calibration`` in report.json, printed under the value): the same
metric, in the same features, at the same sample counts, against the same reference images, for another
real set (the real-vs-real floor), real images blurred by a Gaussian of 0.5 px and 1 px, and real images with
additive noise; and a line saying where the measured value falls on that scale.

Every run writes ``OUT/report.json`` and PNG plots beside it (atomically).

The measurements are :mod:`vqldm.evaluation`'s (``evaluate_autoencoder``, ``evaluate_generation``,
``train_domain_classifier``); this module turns flags into their parameters and checks the flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..evaluation.feature_training import FeatureTrainConfig, train_domain_classifier
from ..evaluation.features import DEFAULT_FEATURES, FeatureExtractor, load_feature_extractor
from ..evaluation.generation import evaluate_generation, format_generation_report
from ..pipelines.sampler import load_sampler
from ..evaluation.reconstruction import evaluate_autoencoder, format_autoencoder_report
from ..evaluation.report import resolve_device
from ..plumbing.errors import UserError
from ..plumbing.trainkit import check_max_steps
from .argtypes import key_value
from .generate import set_sampler

MODES = ("autoencoder", "generation", "train-features")


def add_arguments(p) -> None:
    p.add_argument("mode", choices=MODES, help="what to evaluate: autoencoder | generation | train-features")
    p.add_argument("--model", default=None, help="autoencoder run / VQModel folder, or pipeline folder (default: the shipped model)")
    p.add_argument("--data", default="fashion-mnist", help="image folder or named dataset whose held-out split is the reference (default fashion-mnist)")
    p.add_argument("--features", default=None,
                   help=f"feature network: {DEFAULT_FEATURES} (shipped, detail-sensitive, the default), fashion-mnist-classifier (shipped, first version, blind to blur), inception (FID weights), or a train-features folder")
    p.add_argument("--out", default=None, help="report folder (default runs/evaluate-MODE; train-features: runs/features)")
    p.add_argument("--num-samples", type=int, default=1000, help="generation: images generated (and real images compared)")
    p.add_argument("--max-images", type=int, default=2000, help="autoencoder: held-out images reconstructed (default 2000)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 100; train-features 128)")
    p.add_argument("--steps", type=int, default=None, help="generation: sampling steps (default: the model's default_steps, else 50)")
    p.add_argument("--scheduler", choices=["ddim", "ddpm", "dpm", "euler", "unipc"], default=None, help="generation: sampler (default: the pipeline's)")
    p.add_argument("--scheduler-option", dest="scheduler_options", action="append", type=key_value, default=None, metavar="KEY=VALUE",
                   help="generation: a setting of the sampler, repeatable (timestep_spacing=trailing; on top of the model's "
                        "default_scheduler_options)")
    p.add_argument("--guidance", type=float, default=None,
                   help="generation: classifier-free guidance scale (class-conditional models; default: the model's default_guidance, else 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps-sweep", default=None, metavar="K1,K2,...", help="generation: also measure FID at these step counts")
    p.add_argument("--sweep-schedulers", default="ddim,dpm,unipc", help="schedulers for --steps-sweep (default ddim,dpm,unipc)")
    p.add_argument("--sweep-samples", type=int, default=500, help="images per point of --steps-sweep (default 500)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--fit", choices=["pad", "resize", "crop"], default=None, help="how real images are brought to the model's size (default: the run's config, else pad)")
    p.add_argument("--nmi", choices=["geometric", "arithmetic"], default="geometric", help="NMI normalisation: sqrt(H(C)H(Y)) or (H(C)+H(Y))/2")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g = p.add_argument_group("train-features")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (quick runs)")
    g.add_argument("--train-images", type=int, default=None, help="use at most this many training images")
    g.add_argument("--image-size", type=int, default=32)
    g.add_argument("--channels", type=int, default=1, choices=[1, 3])
    g.add_argument("--detail-layers", type=int, default=2,
                   help="conv activations of the first blocks whose spatial spread joins the features (0: the embedding alone)")
    g.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=True,
                   help="standardise every feature by its spread on training images (default on)")


def main(args) -> int:
    if args.batch_size is None:
        args.batch_size = 128 if args.mode == "train-features" else 100
    for name in ("num_samples", "max_images", "batch_size", "steps", "sweep_samples", "kid_subsets", "kid_subset_size", "epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.mode == "train-features":
        return cmd_train_features(args)
    if args.mode == "autoencoder":
        return cmd_autoencoder(args)
    return cmd_generation(args)


def parse_ints(text: str, flag: str) -> list[int]:
    """``10,20,50`` -> [10, 20, 50]; anything else is a one-line error naming ``flag``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers like 10,20,50; got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} takes positive integers like 10,20,50; got {text!r}")
    return values


def _load_features(args, device) -> FeatureExtractor:
    """The ``--features`` network; its errors say which flag they are about."""
    try:
        return load_feature_extractor(args.features, args.batch_size, device)
    except UserError as err:
        raise UserError(f"--features: {err}") from None


def cmd_train_features(args) -> int:
    if not 0 <= args.detail_layers <= 2 * 3:
        raise UserError(f"--detail-layers must be between 0 and 6 (two per block), got {args.detail_layers}")
    check_max_steps(args.max_steps)
    cfg = FeatureTrainConfig(image_size=args.image_size, channels=args.channels, fit=args.fit or "pad", epochs=args.epochs,
                             max_steps=args.max_steps, batch_size=args.batch_size,
                             max_images=args.train_images, seed=args.seed, detail_layers=args.detail_layers,
                             standardize=args.standardize)
    out = Path(args.out or "runs/features")
    train_domain_classifier(args.data, out, cfg, progress=not args.no_progress, log=lambda m: tqdm.write(m))
    print(f"use it with: vqldm evaluate generation --features {out}")
    return 0


def cmd_autoencoder(args) -> int:
    from ..autoencoder.model import load_vqvae
    from ..pipelines.default_model import DEFAULT_MODEL_DIR

    device = resolve_device(args.device)
    extractor = _load_features(args, device)  # fail fast on missing features, before the model loads
    ae = load_vqvae(args.model or DEFAULT_MODEL_DIR, what="--model")
    out = Path(args.out or "runs/evaluate-autoencoder")
    report = evaluate_autoencoder(ae, args.data, out, features=extractor, num_images=args.max_images, batch_size=args.batch_size,
                                  fit=args.fit, nmi=args.nmi, seed=args.seed, device=device, progress=not args.no_progress)
    print(format_autoencoder_report(report))
    print(f"report: {out / 'report.json'}  plots: {', '.join(report['plots'].values())}")
    return 0


def cmd_generation(args) -> int:
    device = resolve_device(args.device)
    sweep = parse_ints(args.steps_sweep, "--steps-sweep") if args.steps_sweep else []
    sweep_schedulers = [s.strip() for s in args.sweep_schedulers.split(",") if s.strip()]
    extractor = _load_features(args, device)
    pipe = load_sampler(args.model, device, freeze_unet=True)  # many batches: the frozen UNet pays off
    what = repr(args.model) if args.model else "the shipped model"
    if getattr(pipe, "is_superres", False):
        raise UserError(f"{what} is a super-resolution model, which upscales images rather than sampling from noise; "
                        f"measure it with benchmarks/bench_superres.py (PSNR / rFID against bicubic)")
    if getattr(pipe, "is_text_model", False):
        if args.guidance not in (None, 1.0):
            raise UserError(f"{what} is text-to-image; evaluate generation samples it unconditionally (the empty prompt), "
                            f"without guidance: drop --guidance")
        print(f"{what} is text-to-image: sampling unconditionally (the empty prompt)", file=sys.stderr)
    set_sampler(pipe, args.scheduler, args.scheduler_options)
    out = Path(args.out or "runs/evaluate-generation")
    report = evaluate_generation(pipe, args.data, out, features=extractor, model_name=args.model or "shipped",
                                 num_samples=args.num_samples, batch_size=args.batch_size, steps=args.steps, guidance=args.guidance,
                                 seed=args.seed, fit=args.fit, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                                 sweep=sweep, sweep_schedulers=sweep_schedulers, sweep_samples=args.sweep_samples,
                                 device=device, progress=not args.no_progress)
    print(format_generation_report(report))
    print(f"report: {out / 'report.json'}  plots: {', '.join(report['plots'].values())}")
    return 0
