"""Measuring a sampler (a latent diffusion pipeline or a prior over codes) against held-out real images.

:func:`evaluate_generation` is ``vqldm evaluate generation`` without the command line: FID, KID and
precision/recall in the given features, each with its calibration (:mod:`.calibration`), class accuracy
for class-conditional models, the codes a prior emits, and optionally FID vs sampling steps for several
schedulers; it writes ``out/report.json`` and PNG plots. Benchmarks call the pieces (:func:`generate_images`,
:func:`sweep_steps`) so that their numbers are computed exactly as ``vqldm evaluate`` computes them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..autoencoder.model import code_vocabulary, encode_indices, global_codes
from ..pipelines.prior_pipeline import CodePriorPipeline
from ..plumbing.errors import UserError
from ..plumbing.runs import bar_disable
from .calibration import calibration_rows, calibration_setup, format_calibration, format_value, place_on_scale
from .features import DEFAULT_FEATURES, FeatureExtractor, load_feature_extractor
from .metrics import distribution_metrics
from .plots import plot_image_rows, plot_steps_sweep
from .reference import load_reference_data, other_real_images, real_indices, training_holdout_fraction
from .report import environment, resolve_device, write_report


@torch.inference_mode()
def prior_code_usage(pipe, codes: torch.Tensor, real: torch.Tensor, batch_size: int) -> dict:
    """The share of the codebook a prior emitted in ``codes`` (the grids behind the generated images, collected
    by :func:`generate_images`), next to the codes the autoencoder uses on the real images ``real``."""
    k = code_vocabulary(pipe.vqvae)  # residual / hierarchical: K per stage, counted apart
    emitted = torch.bincount(global_codes(pipe.vqvae, codes.reshape(codes.shape[0], -1).cpu()).flatten(), minlength=k)
    used = torch.zeros(k, dtype=torch.long)
    for part in real.split(batch_size):
        _, idx = encode_indices(pipe.vqvae, pipe.vqvae.encode(part.to(pipe.device)).latents)
        used += torch.bincount(global_codes(pipe.vqvae, idx.cpu()).flatten(), minlength=k)
    emitted_set, used_set = emitted > 0, used > 0
    return {"codebook_size": k, "codes_emitted": int(emitted_set.sum()), "codes_used_on_real": int(used_set.sum()),
            "emitted_share_of_real_usage": float((emitted_set & used_set).sum()) / max(int(used_set.sum()), 1),
            "emitted_outside_real_usage": int((emitted_set & ~used_set).sum()),
            "samples": int(codes.shape[0]), "real_images": int(real.shape[0])}


def pipeline_data_fit(pipe, default: str = "pad") -> str:
    """How the training images were fitted to size (from the pipeline's vqldm.json), so real images match."""
    info = getattr(pipe, "info", None) or {}
    cfg = info.get("training_config") or {}
    return str((cfg.get("data") or {}).get("fit") or default)


def generate_images(pipe, num_images: int, batch_size: int, steps: int, guidance: float, seed: int,
                    num_classes: int | None, progress: bool = True, desc: str = "generating",
                    codes_out: list | None = None) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """``num_images`` images in [-1, 1] (CPU), their class labels (balanced: i mod num_classes) or None, and
    the seconds spent per image. Batch b uses ``torch.Generator().manual_seed(seed + b)``, so results do not
    depend on anything but the arguments. ``codes_out`` (a list) collects a prior's code grids per batch."""
    pipe.set_progress_bar_config(disable=True)
    labels = torch.arange(num_images) % num_classes if num_classes else None
    out = []
    start_time = time.perf_counter()
    bar = tqdm(total=num_images, desc=desc, unit="img", disable=bar_disable(progress), leave=False)
    for b, start in enumerate(range(0, num_images, batch_size)):
        size = min(batch_size, num_images - start)
        kwargs = {"batch_size": size, "num_inference_steps": steps, "generator": torch.Generator().manual_seed(seed + b), "output_type": "pt"}
        if labels is not None:
            kwargs.update(class_labels=labels[start : start + size], guidance_scale=guidance)
        result = pipe(**kwargs)
        if codes_out is not None and getattr(result, "codes", None) is not None:
            codes_out.append(result.codes.cpu())
        images = torch.as_tensor(result.images).float().cpu()
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
                kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = True,
                calibration: list[dict] | None = None) -> list[dict]:
    """FID / KID and seconds per image for each (scheduler, steps); restores the pipeline's scheduler.

    With ``calibration`` (rows of :func:`calibration_rows` at ``num_samples`` probe images, computed once for
    the whole sweep), each row also says where its FID and KID fall on that scale (``fid_scale``, ``kid_scale``)."""
    original = getattr(pipe, "scheduler", None)  # a prior has none: its sweep is over decoding rounds
    rows = []
    try:
        for name in schedulers:
            pipe.set_scheduler(name)
            warm_up(pipe, batch_size, guidance, num_classes)
            for steps in steps_list:
                fake, _, spi = generate_images(pipe, num_samples, batch_size, steps, guidance, seed, num_classes, progress, f"{name} {steps} steps")
                fake_f = extractor(fake, progress, "features")
                m = distribution_metrics(real_f, fake_f, kid_subsets, kid_subset_size, seed, with_pr=False)
                row = {"scheduler": name, "steps": steps, "seconds_per_image": spi, **m}
                if calibration:
                    row["fid_scale"] = place_on_scale(m["fid"], calibration, "fd")
                    row["kid_scale"] = place_on_scale(m["kid_mean"], calibration, "kid_mean")
                rows.append(row)
    finally:
        if original is not None:
            pipe.scheduler = original
    return rows


def class_accuracy(pipe, extractor: FeatureExtractor, fake: torch.Tensor, fake_labels: torch.Tensor, real: torch.Tensor,
                   real_labels: torch.Tensor, num_classes: int, class_names: Sequence[str], batch_size: int,
                   device: torch.device) -> dict | None:
    """How often a domain classifier with the same classes finds each generated image's class (and how often
    it is right on the real images, its ceiling). The features' own classifier when its classes match, else
    the default network's; ``None`` when neither has ``num_classes`` classes."""
    classifier = extractor if extractor.num_classes == num_classes else None
    if classifier is None:
        try:
            candidate = load_feature_extractor(DEFAULT_FEATURES, batch_size, device)
            classifier = candidate if candidate.num_classes == num_classes else None
        except UserError:
            classifier = None
    if classifier is None:
        return None
    names = list(getattr(pipe, "class_names", None) or class_names)
    pred = classifier.classify(fake)
    real_pred = classifier.classify(real)
    return {
        "class_accuracy": float((pred == fake_labels).float().mean()),
        "classifier_accuracy_on_real": float((real_pred == real_labels).float().mean()),
        "per_class": {(names[c] if c < len(names) else str(c)): float((pred[fake_labels == c] == c).float().mean())
                      for c in range(num_classes)},
        "classifier": classifier.name,
    }


def evaluate_generation(pipe, data: str, out: str | Path, *, features: FeatureExtractor | None = None,
                        model_name: str = "shipped", num_samples: int = 1000, batch_size: int = 100,
                        steps: int | None = None, guidance: float | None = None, seed: int = 0, fit: str | None = None,
                        kid_subsets: int = 100, kid_subset_size: int = 1000, sweep: Sequence[int] = (),
                        sweep_schedulers: Sequence[str] = ("ddim", "dpm", "unipc"), sweep_samples: int = 500,
                        device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Measure ``pipe`` against the held-out split of ``data``; write ``out/report.json`` and its plots.

    ``features``: the feature network (default: the shipped default). ``steps`` / ``guidance``: the model's
    ``default_steps`` / ``default_guidance`` when ``None`` (guidance only for class-conditional models).
    ``fit``: how real images are brought to the model's size (default: the training run's). ``sweep``: step
    counts at which FID is also measured with each of ``sweep_schedulers`` (a prior sweeps its own decoding
    steps), ``sweep_samples`` images per point. Returns the report (before its JSON conversion)."""
    device = resolve_device(device)
    out = Path(out)
    extractor = features if features is not None else load_feature_extractor(None, batch_size, device)
    num_classes = pipe.num_classes or None
    if guidance is None:
        guidance = pipe.default_guidance if num_classes else 1.0
    is_prior = isinstance(pipe, CodePriorPipeline)
    if is_prior:  # a prior samples codes: its "sweep" is over its own decoding steps
        sweep_schedulers = [pipe.kind]
    size, channels = int(pipe.vqvae.config.sample_size), int(pipe.vqvae.config.in_channels)
    fit = fit or pipeline_data_fit(pipe)

    trained = ((getattr(pipe, "info", None) or {}).get("training_config") or {}).get("data")
    ds = load_reference_data(data, size, channels, fit, progress, holdout_fraction=training_holdout_fraction(trained, data))
    real_idx = real_indices(len(ds.holdout), num_samples, seed)
    real, real_labels = ds.holdout.batch(real_idx)  # = real_images(ds.holdout, ...); the indices keep the calibration's images disjoint
    real_f = extractor(real, progress, "features (real)")
    warm_up(pipe, batch_size, guidance, num_classes)
    if steps is None:
        steps = pipe.resolve_steps(None)
    codes: list = []
    fake, fake_labels, spi = generate_images(pipe, num_samples, batch_size, steps, guidance, seed, num_classes, progress,
                                             codes_out=codes)
    fake_f = extractor(fake, progress, "features (generated)")
    result = distribution_metrics(real_f, fake_f, kid_subsets, kid_subset_size, seed)

    # the scale FID / KID are read on: as many other held-out images as were generated, those blurred /
    # noised, each vs the same real reference (computed once; again for the sweep only at another count)
    def calibrate(n_measured: int) -> tuple[list[dict], dict]:
        probe, probe_desc = other_real_images(ds, real_idx, n_measured, seed)
        rows = calibration_rows(real, probe, extractor, ref_features=real_f, kid_subsets=kid_subsets,
                                kid_subset_size=kid_subset_size, seed=seed, progress=progress) if probe is not None else []
        return rows, calibration_setup(f"the same {real_f.shape[0]} held-out real images", probe_desc, paired=False)

    calibration, setup = calibrate(fake_f.shape[0])
    result["fid_scale"] = place_on_scale(result["fid"], calibration, "fd")
    result["kid_scale"] = place_on_scale(result["kid_mean"], calibration, "kid_mean")

    # codebook report of a prior: which codes it emits, against the codes the autoencoder uses on real data
    code_usage = prior_code_usage(pipe, torch.cat(codes), real, batch_size) if is_prior else None
    class_acc = class_accuracy(pipe, extractor, fake, fake_labels, real, real_labels, num_classes, ds.holdout.class_names,
                               batch_size, device) if num_classes else None

    plots = {}
    nrow = num_classes if num_classes and num_classes <= 16 else 10
    show = min(len(fake), 4 * nrow)
    plots["real_vs_generated"] = plot_image_rows(
        [(f"held-out real ({ds.source})", real[:show]),
         (f"generated ({steps} steps" + (f", guidance {guidance}, one class per column)" if num_classes else ")"), fake[:show])],
        out / "real_vs_generated.png", nrow=nrow).name

    sweep_rows, sweep_calibration, sweep_setup = [], None, None
    if sweep:
        sweep_calibration, sweep_setup = (calibration, setup) if sweep_samples == fake_f.shape[0] else calibrate(sweep_samples)
        sweep_rows = sweep_steps(pipe, real_f, extractor, list(sweep_schedulers), list(sweep), sweep_samples,
                                 batch_size, guidance, seed, num_classes, kid_subsets, kid_subset_size, progress,
                                 calibration=sweep_calibration)
        plots["fid_vs_steps"] = plot_steps_sweep(sweep_rows, out / "fid_vs_steps.png",
                                                 f"FID vs steps ({sweep_samples} generated vs {real_f.shape[0]} real, {extractor.name})").name

    report = {
        "mode": "generation",
        "model": model_name,
        "data": ds.source,
        "features": extractor.name,
        "feature_dim": extractor.dim,
        "steps": steps,
        "scheduler": pipe.sampler_name,
        "guidance": guidance if num_classes else None,
        "num_classes": num_classes,
        "seed": seed,
        "seconds_per_image": spi,
        **result,
        "calibration": calibration,
        "calibration_setup": setup,
        "class_accuracy": class_acc,
        "prior_code_usage": code_usage,
        "steps_sweep": sweep_rows,
        "steps_sweep_calibration": sweep_calibration,
        "steps_sweep_calibration_setup": sweep_setup,
        "plots": plots,
        "environment": environment(device),
    }
    write_report(out, report)
    return report


def format_kid(result: dict) -> str:
    return f"{result['kid_mean']:.4g} ± {result['kid_std']:.2g}"


def format_sweep_table(rows: list[dict]) -> str:
    """One line per (scheduler, steps) of :func:`sweep_steps`, with the calibration column when it has one."""
    scale = any("fid_scale" in r for r in rows)
    lines = [f"{'scheduler':<10} {'steps':>5} {'FID':>9} {'KID (mean ± std)':>20} {'s/image':>9} {'samples':>8}"
             + ("  FID on the calibration scale" if scale else "")]
    for r in rows:
        lines.append(f"{r['scheduler']:<10} {r['steps']:>5} {r['fid']:>9.3f} {format_kid(r):>20} "
                     f"{r['seconds_per_image']:>9.4f} {r['num_generated']:>8}" + (f"  {r.get('fid_scale', '-')}" if scale else ""))
    return "\n".join(lines)


def format_generation_report(report: dict) -> str:
    """The printed summary of an :func:`evaluate_generation` report: each figure with its sample counts and
    its calibration, then the step sweep."""
    num_classes, guidance = report["num_classes"], report["guidance"]
    n_f, n_r = report["num_generated"], report["num_real"]
    calibration, class_acc, code_usage = report["calibration"], report["class_accuracy"], report["prior_code_usage"]
    lines = [f"generation {report['model']} ({report['scheduler']}, {report['steps']} steps{', guidance ' + str(guidance) if num_classes else ''}) "
             f"vs held-out {report['data']}:",
             f"  FID {report['fid']:.3f}   ({n_f} generated vs {n_r} real images, {report['features']} features, {report['feature_dim']}-d)",
             format_calibration(calibration, report["calibration_setup"], "FID", report["fid"]),
             f"  KID {format_kid(report)}   ({report['kid_subsets']} subsets of {report['kid_subset_size']})"]
    if calibration:
        lines.append(f"    KID {format_value(report['kid_mean'])} on the scale above (its KID column): {report['kid_scale']}")
    if "precision" in report:
        lines.append(f"  precision {report['precision']:.3f}   recall {report['recall']:.3f}   (k=3, {n_f} generated vs {n_r} real)")
    if class_acc:
        lines.append(f"  class accuracy {100 * class_acc['class_accuracy']:.1f}% of {n_f} generated images "
                     f"(classifier: {100 * class_acc['classifier_accuracy_on_real']:.1f}% on {n_r} real)")
    elif num_classes:
        lines.append("  class accuracy: - (no domain classifier with matching classes; evaluate in features that have them)")
    if code_usage:
        lines.append(f"  codes emitted by the prior: {code_usage['codes_emitted']}/{code_usage['codebook_size']} over {code_usage['samples']} samples; "
                     f"{100 * code_usage['emitted_share_of_real_usage']:.1f}% of the {code_usage['codes_used_on_real']} codes the autoencoder "
                     f"uses on {code_usage['real_images']} real images ({code_usage['emitted_outside_real_usage']} emitted outside them)")
    env = report["environment"]
    lines.append(f"  {report['seconds_per_image']:.4f} s per image on {env['device']} ({env['torch_threads']} threads)")
    sweep_rows = report["steps_sweep"]
    if sweep_rows:
        sweep_samples = sweep_rows[0]["num_generated"]
        lines.append(format_sweep_table(sweep_rows))
        if sweep_samples == n_f:  # the sweep was read on the calibration above
            lines.append(f"  sweep calibration: the one above ({sweep_samples} images per point, as many as generated above)")
        else:
            lines.append(f"  sweep calibration ({sweep_samples} images per point):")
            lines.append(format_calibration(report["steps_sweep_calibration"], report["steps_sweep_calibration_setup"]))
    return "\n".join(lines)
