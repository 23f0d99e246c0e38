"""Measuring an autoencoder on held-out images: reconstruction quality, rFID with its calibration, and
how the codebook is used (overall and per class).

:func:`evaluate_autoencoder` is ``vqldm evaluate autoencoder`` without the command line; it writes
``out/report.json`` and PNG plots and returns the report.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..autoencoder.evaluate import evaluate_reconstruction
from ..autoencoder.losses import LossConfig, load_lpips, perceptual_loss
from ..autoencoder.model import LoadedAutoencoder, code_vocabulary, encode_indices
from ..plumbing.runs import bar_disable
from . import metrics
from .calibration import calibration_rows, calibration_setup, format_calibration, place_on_scale
from .features import FeatureExtractor, load_feature_extractor
from .plots import plot_class_heatmap, plot_code_frequency, plot_image_rows
from .reference import load_reference_data, other_real_images, training_holdout_fraction
from .report import environment, resolve_device, write_report


@torch.inference_mode()
def reconstruct(vqmodel, images: torch.Tensor, batch_size: int, device, progress: bool) -> torch.Tensor:
    """[-1, 1] images -> reconstructions through encode, nearest-code lookup and decode (CPU tensor)."""
    out = []
    for start in tqdm(range(0, images.shape[0], batch_size), desc="reconstructing", disable=bar_disable(progress), leave=False):
        x = images[start : start + batch_size].to(device)
        z_q, _ = encode_indices(vqmodel, vqmodel.encode(x).latents)
        out.append(vqmodel.decode(z_q, force_not_quantize=True).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def lpips_mean(originals: torch.Tensor, recs: torch.Tensor, batch_size: int, device) -> tuple[float | None, str]:
    """Mean LPIPS (VGG) of the reconstructions, or ``None`` and why it was not measured (no package, no weights)."""
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


def evaluate_autoencoder(autoencoder: LoadedAutoencoder, data: str, out: str | Path, *, features: FeatureExtractor | None = None,
                         num_images: int = 2000, batch_size: int = 100, fit: str | None = None, nmi: str = "geometric",
                         seed: int = 0, device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Measure ``autoencoder`` (from :func:`~vqldm.autoencoder.model.load_vqvae`) on the first ``num_images``
    held-out images of ``data``; write ``out/report.json`` and its plots.

    ``features``: the rFID feature network (default: the shipped default). ``fit``: how images are brought to
    the model's size (default: its training run's, else pad). ``nmi``: ``geometric`` or ``arithmetic``
    normalisation of NMI(codes; classes). Returns the report (before its JSON conversion)."""
    device = resolve_device(device)
    out = Path(out)
    extractor = features if features is not None else load_feature_extractor(None, batch_size, device)
    vq = autoencoder.vqvae.to(device)
    size = int(vq.config.sample_size)
    fit = fit or (autoencoder.data or {}).get("fit", "pad")
    ds = load_reference_data(data, size, int(vq.config.in_channels), fit, progress,
                             holdout_fraction=training_holdout_fraction(autoencoder.data, data))
    holdout = ds.holdout
    n = min(num_images, len(holdout))

    # PSNR / SSIM / codebook statistics over the first n held-out images (autoencoder.evaluate)
    rec_stats = evaluate_reconstruction(vq, holdout, batch_size, device, n, progress=progress, return_details=True)
    counts, indices = rec_stats.pop("counts"), rec_stats.pop("indices")
    x, labels = holdout.batch(torch.arange(n))
    recs = reconstruct(vq, x, batch_size, device, progress)
    lpips_value, lpips_note = lpips_mean(x, recs, batch_size, device)
    real_f = extractor(x, progress, "features (originals)")
    rec_f = extractor(recs, progress, "features (reconstructions)")
    rfid = metrics.fid_from_features(real_f, rec_f)

    # the scale rFID is read on: n other real images vs the originals (floor); the originals blurred / noised
    # vs themselves (paired, as the reconstructions are)
    probe, probe_desc = other_real_images(ds, torch.arange(n), n, seed, train_when_short=True)
    calibration = calibration_rows(x, probe, extractor, ref_features=real_f, paired=True, seed=seed,
                                   progress=progress) if probe is not None else []
    setup = calibration_setup(f"the {n} held-out originals", probe_desc, paired=True)

    class_report = None
    if holdout.num_classes >= 2 and bool((labels >= 0).all()):
        class_report = metrics.per_class_code_report(indices, labels, code_vocabulary(vq), holdout.class_names, nmi)

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
        "model": str(autoencoder.folder),
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
        "rfid_scale": place_on_scale(rfid, calibration),
        "calibration": calibration,
        "calibration_setup": setup,
        "feature_dim": extractor.dim,
        "codebook": {k: rec_stats[k] for k in ("codebook_usage", "codes_used", "dead_codes", "perplexity", "perplexity_max", "entropy_bits")},
        "codebook_size": int(vq.config.num_vq_embeddings),
        "codebooks": code_vocabulary(vq) // int(vq.config.num_vq_embeddings),  # residual / hierarchical: one per stage
        "latent_shape": list(indices.shape[1:]),
        "per_class": class_report,
        "plots": plots,
        "environment": environment(device),
    }
    write_report(out, report)
    return report


def format_autoencoder_report(report: dict) -> str:
    """The printed summary of an :func:`evaluate_autoencoder` report: quality, rFID with its calibration,
    codebook usage, per-class codes."""
    n, size, lpips_value, rfid = report["images"], report["image_size"], report["lpips"], report["rfid"]
    lines = [f"autoencoder {report['model']} on {n} held-out {report['data']} images ({size}x{size}):",
             f"  PSNR {report['psnr']:.2f} dB   SSIM {report['ssim']:.4f}   LPIPS "
             + (f"{lpips_value:.4f}" if lpips_value is not None else f"- ({report['lpips_note']})"),
             f"  rFID {rfid:.3f} ({n} reconstructions vs {n} originals, {report['rfid_features']} features, {report['feature_dim']}-d)",
             format_calibration(report["calibration"], report["calibration_setup"], "rFID", rfid)]
    cb = report["codebook"]
    stages = report.get("codebooks", 1)  # residual / hierarchical: the codes of all stages' tables together
    table = f": {stages} tables of {report['codebook_size']}" if stages > 1 else ""
    lines.append(f"  codebook usage {cb['codebook_usage']:.1f}% ({cb['codes_used']}/{stages * report['codebook_size']} codes{table}, "
                 f"{cb['dead_codes']} dead), perplexity {cb['perplexity']:.1f} of {cb['perplexity_max']:.0f}")
    class_report = report["per_class"]
    if class_report is not None:
        per = class_report["codes_per_class"]
        lines.append("  per-class codes: " + ", ".join(f"{k} {v}" for k, v in per.items()))
        lines.append(f"  codes shared by all classes {class_report['codes_shared_by_all_classes']}; "
                     f"NMI(codes; classes) {class_report['nmi']:.4f} [{class_report['nmi_normalization']}, {class_report['positions']} positions]")
    return "\n".join(lines)
