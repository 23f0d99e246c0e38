"""``vqldm evaluate``: reconstruction, codebook and generation metrics, with a JSON report and PNG plots.

Modes (first positional argument)
* ``autoencoder``: PSNR, SSIM, LPIPS (when its weights are present), rFID (reconstructions vs originals in
  domain features), codebook usage %, perplexity, dead codes, and the per-class codebook report (codes per
  class, NMI between code indices and class labels).
* ``generation``: FID, KID, precision/recall between generated and held-out real images (sample counts
  stated with every figure), class accuracy for class-conditional models, and optionally FID vs sampling
  steps for several schedulers (``--steps-sweep 10,20,50``).
* ``train-features``: train the domain classifier whose penultimate layer gives the features.

Every run writes ``OUT/report.json`` and PNG plots beside it (atomically).
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from autoencoder.checkpoint import atomic_write_bytes, atomic_write_json
from autoencoder.errors import UserError

from . import metrics
from .features import FeatureExtractor, FeatureTrainConfig, load_feature_extractor, train_domain_classifier

MODES = ("autoencoder", "generation", "train-features")
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"


def add_arguments(p) -> None:
    p.add_argument("mode", choices=MODES, help="what to evaluate: autoencoder | generation | train-features")
    p.add_argument("--model", default=None, help="autoencoder run / VQModel folder, or pipeline folder (default: the shipped model)")
    p.add_argument("--data", default="fashion-mnist", help="image folder or named dataset whose held-out split is the reference (default fashion-mnist)")
    p.add_argument("--features", default="fashion-mnist-classifier",
                   help="feature network: fashion-mnist-classifier (shipped), inception (FID weights), or a train-features folder")
    p.add_argument("--out", default=None, help="report folder (default runs/evaluate-MODE; train-features: runs/features)")
    p.add_argument("--num-samples", type=int, default=1000, help="generation: images generated (and real images compared)")
    p.add_argument("--max-images", type=int, default=2000, help="autoencoder: held-out images reconstructed (default 2000)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 100; train-features 128)")
    p.add_argument("--steps", type=int, default=None, help="generation: sampling steps (default: the model's default_steps, else 50)")
    p.add_argument("--scheduler", choices=["ddim", "ddpm", "dpm", "euler", "unipc"], default=None, help="generation: sampler (default: the pipeline's)")
    p.add_argument("--guidance", type=float, default=1.0, help="generation: classifier-free guidance scale (class-conditional models)")
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


def main(args) -> int:
    if args.batch_size is None:
        args.batch_size = 128 if args.mode == "train-features" else 100
    for name in ("num_samples", "max_images", "batch_size", "steps", "sweep_samples", "kid_subsets", "kid_subset_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.mode == "train-features":
        return cmd_train_features(args)
    if args.mode == "autoencoder":
        return cmd_autoencoder(args)
    return cmd_generation(args)


# ----------------------------------------------------------------------------- helpers
def _device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _environment(device: torch.device) -> dict:
    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Render a matplotlib figure to PNG and write it atomically."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers like 10,20,50; got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} takes positive integers like 10,20,50; got {text!r}")
    return values


def _out_dir(args, default: str) -> Path:
    return Path(args.out or default)


def load_reference_data(source: str, image_size: int, channels: int, fit: str, progress: bool):
    """The held-out split of ``source`` at the model's size (the real side of every comparison)."""
    from autoencoder.data import DataConfig, load_datasets

    labels = "folders" if Path(source).expanduser().is_dir() and any(p.is_dir() for p in Path(source).expanduser().iterdir()) else "none"
    cfg = DataConfig(image_size=image_size, channels=channels, fit=fit, labels=labels)
    return load_datasets(source, cfg, log=lambda m: tqdm.write(m), progress=progress)


def real_images(data, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` held-out images (a fixed random subset; all of them if fewer) in [-1, 1], with labels."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: min(n, len(data))].sort().values
    return data.batch(idx)


def distribution_metrics(real_f: torch.Tensor, fake_f: torch.Tensor, kid_subsets: int = 100, kid_subset_size: int = 1000,
                         seed: int = 0, with_pr: bool = True) -> dict:
    """FID, KID (mean, std) and precision/recall between two feature sets, with the sample counts."""
    kid_mean, kid_std = metrics.kernel_inception_distance(real_f, fake_f, kid_subsets, kid_subset_size, seed)
    out = {"fid": metrics.fid_from_features(real_f, fake_f), "kid_mean": kid_mean, "kid_std": kid_std,
           "kid_subset_size": metrics.kid_subset_size(kid_subset_size, real_f.shape[0], fake_f.shape[0]), "kid_subsets": kid_subsets,
           "num_real": int(real_f.shape[0]), "num_generated": int(fake_f.shape[0])}
    if with_pr and min(real_f.shape[0], fake_f.shape[0]) > 3:
        out["precision"], out["recall"] = metrics.precision_recall(real_f, fake_f, k=3)
    return out


# ----------------------------------------------------------------------------- train-features
def cmd_train_features(args) -> int:
    cfg = FeatureTrainConfig(image_size=args.image_size, channels=args.channels, fit=args.fit or "pad", epochs=args.epochs,
                             max_steps=args.max_steps, batch_size=args.batch_size,
                             max_images=args.train_images, seed=args.seed)
    out = _out_dir(args, "runs/features")
    train_domain_classifier(args.data, out, cfg, progress=not args.no_progress, log=lambda m: tqdm.write(m))
    print(f"use it with: vqldm evaluate generation --features {out}")
    return 0


# ----------------------------------------------------------------------------- autoencoder
def _find_vqmodel_dir(model: str | None) -> tuple[Path, Path | None]:
    """-> (VQModel folder, run folder holding config.yaml or None)."""
    root = Path(model).expanduser() if model else DEFAULT_MODEL_DIR
    if not root.exists():
        raise UserError(f"--model {str(root)!r} not found; pass an autoencoder run folder, a VQModel folder or a pipeline folder")
    for candidate in (root / "vqvae", root):
        if (candidate / "config.json").is_file():
            run = root if (root / "config.yaml").is_file() else None
            return candidate, run
    if model is None:
        raise UserError(f"no shipped model in {root}; pass --model with an autoencoder run folder (holding vqvae/)")
    raise UserError(f"{str(root)!r} holds no VQModel (config.json, or vqvae/config.json); pass an autoencoder run or pipeline folder")


def load_vqmodel(folder: Path):
    from diffusers import VQModel

    try:
        return VQModel.from_pretrained(str(folder), use_safetensors=True).eval()
    except (OSError, ValueError, EnvironmentError) as err:
        raise UserError(f"could not load the VQModel in {str(folder)!r} ({str(err).splitlines()[0][:120]}); it must be a diffusers VQModel saved with safetensors") from None


def _run_data_config(run: Path | None) -> dict:
    if run is None:
        return {}
    import yaml

    try:
        return (yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}).get("data", {}) or {}
    except (OSError, yaml.YAMLError):
        return {}


@torch.inference_mode()
def reconstruct(vqmodel, images: torch.Tensor, batch_size: int, device, progress: bool) -> torch.Tensor:
    """[-1, 1] images -> reconstructions through encode, nearest-code lookup and decode (CPU tensor)."""
    from autoencoder.evaluate import encode_indices

    out = []
    for start in tqdm(range(0, images.shape[0], batch_size), desc="reconstructing", disable=not progress, leave=False):
        x = images[start : start + batch_size].to(device)
        z_q, _ = encode_indices(vqmodel, vqmodel.encode(x).latents)
        out.append(vqmodel.decode(z_q, force_not_quantize=True).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def _lpips_mean(originals: torch.Tensor, recs: torch.Tensor, batch_size: int, device) -> tuple[float | None, str]:
    from autoencoder.losses import LossConfig, load_lpips, perceptual_loss

    try:
        import lpips  # type: ignore  # noqa: F401
    except ImportError:
        return None, "not measured: the lpips package is missing (pip install 'vqldm[lpips]')"
    notes: list[str] = []
    model = load_lpips(LossConfig(perceptual_weight=1.0), log=notes.append)
    if model is None:
        return None, "not measured: LPIPS VGG weights unavailable offline (put them in the torch cache)"
    model.to(device)
    total = 0.0
    with torch.inference_mode():
        for start in range(0, originals.shape[0], batch_size):
            a, b = recs[start : start + batch_size].to(device), originals[start : start + batch_size].to(device)
            total += float(perceptual_loss(model, a, b)) * a.shape[0]
    return total / originals.shape[0], "lpips (VGG)"


def plot_code_frequency(counts: torch.Tensor, path: Path, title: str) -> Path:
    plt = _pyplot()
    c = counts.double().sort(descending=True).values
    freq = c / c.sum().clamp(min=1)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(range(len(freq)), freq.numpy(), width=1.0, color="#3b6ea5")
    ax.set_yscale("log")
    ax.set_xlabel("code rank (most used first)")
    ax.set_ylabel("share of latent positions")
    ax.set_xlim(-0.5, len(freq) - 0.5)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_class_heatmap(class_counts: torch.Tensor, class_names: list[str], path: Path, title: str) -> Path:
    """Rows: classes; columns: codes ordered by overall frequency; cell: the code's share of the class's positions."""
    plt = _pyplot()
    counts = class_counts.double()
    order = counts.sum(dim=0).argsort(descending=True)
    used = int((counts.sum(dim=0) > 0).sum())
    share = counts[:, order[: max(used, 1)]] / counts.sum(dim=1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(class_names) + 1.6))
    im = ax.imshow(share.numpy(), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(class_names)))
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel(f"code (ordered by overall frequency; {used} used codes shown)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="share of class positions")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_image_rows(rows: list[tuple[str, torch.Tensor]], path: Path, nrow: int) -> Path:
    """Labelled image grids stacked vertically ([-1, 1] tensors)."""
    from autoencoder.runtime import make_grid

    plt = _pyplot()
    grids = [make_grid(imgs, nrow=nrow) for _, imgs in rows]
    width = 8.0
    heights = [width * g.height / g.width + 0.35 for g in grids]  # image aspect + room for the title
    fig, axes = plt.subplots(len(rows), 1, figsize=(width, sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (title, _), grid in zip(axes[:, 0], rows, grids):
        ax.imshow(grid, cmap="gray" if grid.mode == "L" else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def cmd_autoencoder(args) -> int:
    from autoencoder.evaluate import evaluate_reconstruction

    device = _device(args.device)
    progress = not args.no_progress
    extractor = load_feature_extractor(args.features, args.batch_size, device)  # fail fast on missing features
    vq_dir, run = _find_vqmodel_dir(args.model)
    vq = load_vqmodel(vq_dir).to(device)
    data_cfg = _run_data_config(run)
    size, channels = int(vq.config.sample_size), int(vq.config.in_channels)
    fit = args.fit or data_cfg.get("fit", "pad")
    out = _out_dir(args, "runs/evaluate-autoencoder")
    ds = load_reference_data(args.data, size, channels, fit, progress)
    holdout = ds.holdout
    n = min(args.max_images, len(holdout))

    # PSNR / SSIM / codebook statistics over the first n held-out images (autoencoder.evaluate)
    rec_stats = evaluate_reconstruction(vq, holdout, args.batch_size, device, n, progress=progress, return_details=True)
    counts, indices = rec_stats.pop("counts"), rec_stats.pop("indices")
    x, labels = holdout.batch(torch.arange(n))
    recs = reconstruct(vq, x, args.batch_size, device, progress)
    lpips_value, lpips_note = _lpips_mean(x, recs, args.batch_size, device)
    real_f = extractor(x, progress, "features (originals)")
    rec_f = extractor(recs, progress, "features (reconstructions)")
    rfid = metrics.fid_from_features(real_f, rec_f)

    class_report = None
    if holdout.num_classes >= 2 and bool((labels >= 0).all()):
        class_report = metrics.per_class_code_report(indices, labels, int(vq.config.num_vq_embeddings), holdout.class_names, args.nmi)

    plots = {
        "code_frequency": plot_code_frequency(counts, out / "code_frequency.png",
                                              f"sorted code frequency: {rec_stats['codes_used']}/{counts.numel()} codes used, perplexity {rec_stats['perplexity']:.1f} ({n} held-out images)").name,
        "reconstructions": plot_image_rows([("held-out originals", x[:16]), ("reconstructions", recs[:16])], out / "reconstructions.png", nrow=16).name,
    }
    if class_report is not None:
        plots["class_code_heatmap"] = plot_class_heatmap(class_report["counts"], holdout.class_names, out / "class_code_heatmap.png",
                                                         f"per-class code usage (NMI {class_report['nmi']:.3f}, {n} images)").name
        class_report.pop("counts")

    report = {
        "mode": "autoencoder",
        "model": str(vq_dir),
        "data": ds.source,
        "images": n,
        "image_size": size,
        "fit": fit,
        "psnr": rec_stats["psnr"],
        "ssim": rec_stats["ssim"],
        "lpips": lpips_value,
        "lpips_note": lpips_note,
        "rfid": rfid,
        "rfid_features": extractor.name,
        "feature_dim": extractor.dim,
        "codebook": {k: rec_stats[k] for k in ("codebook_usage", "codes_used", "dead_codes", "perplexity", "perplexity_max", "entropy_bits")},
        "codebook_size": int(vq.config.num_vq_embeddings),
        "latent_shape": list(indices.shape[1:]),
        "per_class": class_report,
        "plots": plots,
        "environment": _environment(device),
    }
    atomic_write_json(out / "report.json", _jsonable(report))

    print(f"autoencoder {vq_dir} on {n} held-out {ds.source} images ({size}x{size}):")
    print(f"  PSNR {report['psnr']:.2f} dB   SSIM {report['ssim']:.4f}   LPIPS " + (f"{lpips_value:.4f}" if lpips_value is not None else f"- ({lpips_note})"))
    print(f"  rFID {rfid:.3f} ({n} reconstructions vs {n} originals, {extractor.name} features, {extractor.dim}-d)")
    cb = report["codebook"]
    print(f"  codebook usage {cb['codebook_usage']:.1f}% ({cb['codes_used']}/{report['codebook_size']} codes, {cb['dead_codes']} dead), "
          f"perplexity {cb['perplexity']:.1f} of {cb['perplexity_max']:.0f}")
    if class_report is not None:
        per = class_report["codes_per_class"]
        print(f"  per-class codes: " + ", ".join(f"{k} {v}" for k, v in per.items()))
        print(f"  codes shared by all classes {class_report['codes_shared_by_all_classes']}; "
              f"NMI(codes; classes) {class_report['nmi']:.4f} [{class_report['nmi_normalization']}, {class_report['positions']} positions]")
    print(f"report: {out / 'report.json'}  plots: {', '.join(plots.values())}")
    return 0


# ----------------------------------------------------------------------------- generation
def _load_pipeline(model: str | None, device: torch.device | str = "cpu"):
    try:
        from .pipeline import load_pipeline
    except ImportError as err:
        raise UserError(f"generation evaluation needs the stage-3 pipeline (pipelines/pipeline.py): {err}") from None
    return load_pipeline(model, device=device, freeze_unet=True)  # many batches: the frozen UNet pays off


def pipeline_data_fit(pipe, default: str = "pad") -> str:
    """How the training images were fitted to size (from the pipeline's vqldm.json), so real images match."""
    info = getattr(pipe, "info", None) or {}
    cfg = info.get("training_config") or {}
    return str((cfg.get("data") or {}).get("fit") or default)


def pipeline_num_classes(pipe) -> int | None:
    """Number of real classes of a class-conditional pipeline (its UNet has one extra null class), else None."""
    n = getattr(pipe, "num_classes", None)
    if n is not None:
        return int(n) or None
    embeds = getattr(pipe.unet.config, "num_class_embeds", None)
    return int(embeds) - 1 if embeds else None


def generate_images(pipe, num_images: int, batch_size: int, steps: int, guidance: float, seed: int,
                    num_classes: int | None, progress: bool = True, desc: str = "generating") -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """``num_images`` images in [-1, 1] (CPU), their class labels (balanced: i mod num_classes) or None, and
    the seconds spent per image. Batch b uses ``torch.Generator().manual_seed(seed + b)``, so results do not
    depend on anything but the arguments."""
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(num_images) % num_classes if num_classes else None
    out = []
    start_time = time.perf_counter()
    bar = tqdm(total=num_images, desc=desc, unit="img", disable=not progress, leave=False)
    for b, start in enumerate(range(0, num_images, batch_size)):
        size = min(batch_size, num_images - start)
        kwargs = {"batch_size": size, "num_inference_steps": steps, "generator": torch.Generator().manual_seed(seed + b), "output_type": "pt"}
        if labels is not None:
            kwargs.update(class_labels=labels[start : start + size], guidance_scale=guidance)
        images = pipe(**kwargs).images
        images = torch.as_tensor(images).float().cpu()
        if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)  # NHWC -> NCHW
        out.append(images.clamp(0, 1) * 2 - 1)
        bar.update(size)
    bar.close()
    seconds = (time.perf_counter() - start_time) / max(num_images, 1)
    return torch.cat(out), labels, seconds


def warm_up(pipe, batch_size: int, guidance: float, num_classes: int | None) -> None:
    """One untimed 2-step batch at the timed batch shape, so that one-off costs (allocator, kernels, the
    frozen UNet's graph) stay out of s/image."""
    generate_images(pipe, batch_size, batch_size, 2, guidance, 0, num_classes, progress=False)


def sweep_steps(pipe, real_f: torch.Tensor, extractor: FeatureExtractor, schedulers: list[str], steps_list: list[int],
                num_samples: int, batch_size: int, guidance: float, seed: int, num_classes: int | None,
                kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = True) -> list[dict]:
    """FID / KID and seconds per image for each (scheduler, steps); restores the pipeline's scheduler."""
    original = pipe.scheduler
    rows = []
    try:
        for name in schedulers:
            pipe.set_scheduler(name)
            warm_up(pipe, batch_size, guidance, num_classes)
            for steps in steps_list:
                fake, _, spi = generate_images(pipe, num_samples, batch_size, steps, guidance, seed, num_classes, progress, f"{name} {steps} steps")
                fake_f = extractor(fake, progress, "features")
                m = distribution_metrics(real_f, fake_f, kid_subsets, kid_subset_size, seed, with_pr=False)
                rows.append({"scheduler": name, "steps": steps, "seconds_per_image": spi, **m})
    finally:
        pipe.scheduler = original
    return rows


def plot_steps_sweep(rows: list[dict], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in dict.fromkeys(r["scheduler"] for r in rows):
        pts = sorted((r["steps"], r["fid"]) for r in rows if r["scheduler"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["steps"] for r in rows}))
    ax.xaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(plt.matplotlib.ticker.NullLocator())
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("FID")
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def format_kid(result: dict) -> str:
    return f"{result['kid_mean']:.4g} ± {result['kid_std']:.2g}"


def format_sweep_table(rows: list[dict]) -> str:
    lines = [f"{'scheduler':<10} {'steps':>5} {'FID':>9} {'KID (mean ± std)':>20} {'s/image':>9} {'samples':>8}"]
    for r in rows:
        lines.append(f"{r['scheduler']:<10} {r['steps']:>5} {r['fid']:>9.3f} {format_kid(r):>20} "
                     f"{r['seconds_per_image']:>9.4f} {r['num_generated']:>8}")
    return "\n".join(lines)


def cmd_generation(args) -> int:
    device = _device(args.device)
    progress = not args.no_progress
    sweep = _parse_ints(args.steps_sweep, "--steps-sweep") if args.steps_sweep else []
    sweep_schedulers = [s.strip() for s in args.sweep_schedulers.split(",") if s.strip()]
    extractor = load_feature_extractor(args.features, args.batch_size, device)
    pipe = _load_pipeline(args.model, device)
    if args.scheduler:
        pipe.set_scheduler(args.scheduler)
    num_classes = pipeline_num_classes(pipe)
    size, channels = int(pipe.vqvae.config.sample_size), int(pipe.vqvae.config.in_channels)
    fit = args.fit or pipeline_data_fit(pipe)
    out = _out_dir(args, "runs/evaluate-generation")

    ds = load_reference_data(args.data, size, channels, fit, progress)
    real, real_labels = real_images(ds.holdout, args.num_samples, args.seed)
    real_f = extractor(real, progress, "features (real)")
    warm_up(pipe, args.batch_size, args.guidance, num_classes)
    if args.steps is None:
        from .pipeline import DEFAULT_STEPS

        args.steps = int(pipe.info.get("default_steps") or DEFAULT_STEPS)
    fake, fake_labels, spi = generate_images(pipe, args.num_samples, args.batch_size, args.steps, args.guidance, args.seed, num_classes, progress)
    fake_f = extractor(fake, progress, "features (generated)")
    result = distribution_metrics(real_f, fake_f, args.kid_subsets, args.kid_subset_size, args.seed)

    # class accuracy: a domain classifier with the same classes judges each generated image's class
    class_acc = None
    if num_classes:
        classifier = extractor if extractor.num_classes == num_classes else None
        if classifier is None:
            try:
                candidate = load_feature_extractor("fashion-mnist-classifier", args.batch_size, device)
                classifier = candidate if candidate.num_classes == num_classes else None
            except UserError:
                classifier = None
        if classifier is not None:
            names = list(getattr(pipe, "class_names", None) or ds.holdout.class_names)
            pred = classifier.classify(fake)
            real_pred = classifier.classify(real)
            class_acc = {
                "class_accuracy": float((pred == fake_labels).float().mean()),
                "classifier_accuracy_on_real": float((real_pred == real_labels).float().mean()),
                "per_class": {(names[c] if c < len(names) else str(c)): float((pred[fake_labels == c] == c).float().mean())
                              for c in range(num_classes)},
                "classifier": classifier.name,
            }

    plots = {}
    nrow = num_classes if num_classes and num_classes <= 16 else 10
    show = min(len(fake), 4 * nrow)
    plots["real_vs_generated"] = plot_image_rows(
        [(f"held-out real ({ds.source})", real[:show]),
         (f"generated ({args.steps} steps" + (f", guidance {args.guidance}, one class per column)" if num_classes else ")"), fake[:show])],
        out / "real_vs_generated.png", nrow=nrow).name

    sweep_rows = []
    if sweep:
        sweep_rows = sweep_steps(pipe, real_f, extractor, sweep_schedulers, sweep, args.sweep_samples,
                                 args.batch_size, args.guidance, args.seed, num_classes, args.kid_subsets, args.kid_subset_size, progress)
        plots["fid_vs_steps"] = plot_steps_sweep(sweep_rows, out / "fid_vs_steps.png",
                                                 f"FID vs steps ({args.sweep_samples} generated vs {real_f.shape[0]} real, {extractor.name})").name

    report = {
        "mode": "generation",
        "model": args.model or "shipped",
        "data": ds.source,
        "features": extractor.name,
        "feature_dim": extractor.dim,
        "steps": args.steps,
        "scheduler": type(pipe.scheduler).__name__,
        "guidance": args.guidance if num_classes else None,
        "num_classes": num_classes,
        "seed": args.seed,
        "seconds_per_image": spi,
        **result,
        "class_accuracy": class_acc,
        "steps_sweep": sweep_rows,
        "plots": plots,
        "environment": _environment(device),
    }
    atomic_write_json(out / "report.json", _jsonable(report))

    n_f, n_r = result["num_generated"], result["num_real"]
    print(f"generation {report['model']} ({report['scheduler']}, {args.steps} steps{', guidance ' + str(args.guidance) if num_classes else ''}) vs held-out {ds.source}:")
    print(f"  FID {result['fid']:.3f}   ({n_f} generated vs {n_r} real images, {extractor.name} features, {extractor.dim}-d)")
    print(f"  KID {format_kid(result)}   ({result['kid_subsets']} subsets of {result['kid_subset_size']})")
    if "precision" in result:
        print(f"  precision {result['precision']:.3f}   recall {result['recall']:.3f}   (k=3, {n_f} generated vs {n_r} real)")
    if class_acc:
        print(f"  class accuracy {100 * class_acc['class_accuracy']:.1f}% of {n_f} generated images "
              f"(classifier: {100 * class_acc['classifier_accuracy_on_real']:.1f}% on {n_r} real)")
    elif num_classes:
        print("  class accuracy: - (no domain classifier with matching classes; pass --features with one)")
    print(f"  {spi:.4f} s per image on {device} ({torch.get_num_threads()} threads)")
    if sweep_rows:
        print(format_sweep_table(sweep_rows))
    print(f"report: {out / 'report.json'}  plots: {', '.join(plots.values())}")
    return 0
