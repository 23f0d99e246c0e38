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
"""

from __future__ import annotations

import argparse

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..plumbing.checkpoint import atomic_write_json
from ..plumbing.errors import UserError
from ..evaluation import metrics
from ..evaluation.report import (
    prior_code_usage,
    scheduler_label,
    _device,
    _environment,
    _jsonable,
    _lpips_mean,
    _load_pipeline,
    calibration_rows,
    calibration_setup,
    distribution_metrics,
    format_value,
    generate_images,
    load_reference_data,
    other_real_images,
    pipeline_data_fit,
    pipeline_num_classes,
    place_on_scale,
    real_indices,
    reconstruct,
    sweep_steps,
    warm_up,
)
from ..evaluation.features import FeatureTrainConfig, load_feature_extractor, train_domain_classifier
from ..evaluation.plots import plot_class_heatmap, plot_code_frequency, plot_image_rows, plot_steps_sweep

MODES = ("autoencoder", "generation", "train-features")


def add_arguments(p) -> None:
    p.add_argument("mode", choices=MODES, help="what to evaluate: autoencoder | generation | train-features")
    p.add_argument("--model", default=None, help="autoencoder run / VQModel folder, or pipeline folder (default: the shipped model)")
    p.add_argument("--data", default="fashion-mnist", help="image folder or named dataset whose held-out split is the reference (default fashion-mnist)")
    p.add_argument("--features", default="fashion-mnist-detail",
                   help="feature network: fashion-mnist-detail (shipped, detail-sensitive, the default), fashion-mnist-classifier (shipped, first version, blind to blur), inception (FID weights), or a train-features folder")
    p.add_argument("--out", default=None, help="report folder (default runs/evaluate-MODE; train-features: runs/features)")
    p.add_argument("--num-samples", type=int, default=1000, help="generation: images generated (and real images compared)")
    p.add_argument("--max-images", type=int, default=2000, help="autoencoder: held-out images reconstructed (default 2000)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default 100; train-features 128)")
    p.add_argument("--steps", type=int, default=None, help="generation: sampling steps (default: the model's default_steps, else 50)")
    p.add_argument("--scheduler", choices=["ddim", "ddpm", "dpm", "euler", "unipc"], default=None, help="generation: sampler (default: the pipeline's)")
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
    for name in ("num_samples", "max_images", "batch_size", "steps", "sweep_samples", "kid_subsets", "kid_subset_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.mode == "train-features":
        return cmd_train_features(args)
    if args.mode == "autoencoder":
        return cmd_autoencoder(args)
    return cmd_generation(args)


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


def cmd_train_features(args) -> int:
    cfg = FeatureTrainConfig(image_size=args.image_size, channels=args.channels, fit=args.fit or "pad", epochs=args.epochs,
                             max_steps=args.max_steps, batch_size=args.batch_size,
                             max_images=args.train_images, seed=args.seed, detail_layers=args.detail_layers,
                             standardize=args.standardize)
    if not 0 <= args.detail_layers <= 2 * 3:
        raise UserError(f"--detail-layers must be between 0 and 6 (two per block), got {args.detail_layers}")
    out = _out_dir(args, "runs/features")
    train_domain_classifier(args.data, out, cfg, progress=not args.no_progress, log=lambda m: tqdm.write(m))
    print(f"use it with: vqldm evaluate generation --features {out}")
    return 0


def cmd_autoencoder(args) -> int:
    from ..autoencoder.evaluate import evaluate_reconstruction
    from ..autoencoder.model import load_vqvae
    from ..pipelines.default_model import DEFAULT_MODEL_DIR

    device = _device(args.device)
    progress = not args.no_progress
    extractor = load_feature_extractor(args.features, args.batch_size, device)  # fail fast on missing features
    ae = load_vqvae(args.model or DEFAULT_MODEL_DIR, what="--model")
    vq, vq_dir, data_cfg = ae.vqvae.to(device), ae.folder, ae.data or {}
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

    # the scale rFID is read on: n other real images vs the originals (floor); the originals blurred / noised
    # vs themselves (paired, as the reconstructions are)
    probe, probe_desc = other_real_images(ds, torch.arange(n), n, args.seed, train_when_short=True)
    calibration = calibration_rows(x, probe, extractor, ref_features=real_f, paired=True, seed=args.seed,
                                   progress=progress) if probe is not None else []
    setup = calibration_setup(f"the {n} held-out originals", probe_desc, paired=True)

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
        "rfid_scale": place_on_scale(rfid, calibration),
        "calibration": calibration,
        "calibration_setup": setup,
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
    print(format_calibration(calibration, setup, "rFID", rfid))
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


def format_calibration(rows: list[dict], setup: dict, metric: str | None = None, value: float | None = None,
                       indent: str = "    ") -> str:
    """Where ``metric`` = ``value`` falls on the calibration scale (when given), the scale's header, and one
    line per calibration row (name, FD, KID mean when computed, sample count)."""
    if not rows:
        return f"{indent}calibration: - ({setup['real_vs_real']})"
    with_kid = any(r.get("kid_mean") is not None for r in rows)
    lines = [f"{indent}{metric} {format_value(value)} on this scale: {place_on_scale(value, rows)}"] if metric else []
    lines += [f"{indent}calibration vs {setup['reference']}; real-vs-real: {setup['real_vs_real']}; "
             f"blur (Gaussian, reflect) and noise (std {setup['noise_std']:g}, clamped) of "
             + ("the same originals (paired)" if setup["paired"] else "those other images"),
             f"{indent}  {'':<14} {'FD':>9}" + (f" {'KID mean':>10}" if with_kid else "") + f" {'n':>6}"]
    for r in rows:
        kid = "" if not with_kid else f" {r['kid_mean']:>10.4g}" if r.get("kid_mean") is not None else f" {'-':>10}"
        lines.append(f"{indent}  {r['name']:<14} {r['fd']:>9.3f}{kid} {r['n']:>6}")
    return "\n".join(lines)


def format_kid(result: dict) -> str:
    return f"{result['kid_mean']:.4g} ± {result['kid_std']:.2g}"


def format_sweep_table(rows: list[dict]) -> str:
    scale = any("fid_scale" in r for r in rows)
    lines = [f"{'scheduler':<10} {'steps':>5} {'FID':>9} {'KID (mean ± std)':>20} {'s/image':>9} {'samples':>8}"
             + ("  FID on the calibration scale" if scale else "")]
    for r in rows:
        lines.append(f"{r['scheduler']:<10} {r['steps']:>5} {r['fid']:>9.3f} {format_kid(r):>20} "
                     f"{r['seconds_per_image']:>9.4f} {r['num_generated']:>8}" + (f"  {r.get('fid_scale', '-')}" if scale else ""))
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
    if args.guidance is None:
        args.guidance = float(pipe.info.get("default_guidance") or 1.0) if num_classes else 1.0
    prior_kind = getattr(pipe, "kind", None)
    if prior_kind:  # a prior samples codes: its "sweep" is over its own decoding steps
        sweep_schedulers = [prior_kind]
    size, channels = int(pipe.vqvae.config.sample_size), int(pipe.vqvae.config.in_channels)
    fit = args.fit or pipeline_data_fit(pipe)
    out = _out_dir(args, "runs/evaluate-generation")

    ds = load_reference_data(args.data, size, channels, fit, progress)
    real_idx = real_indices(len(ds.holdout), args.num_samples, args.seed)
    real, real_labels = ds.holdout.batch(real_idx)  # = real_images(ds.holdout, ...); the indices keep the calibration's images disjoint
    real_f = extractor(real, progress, "features (real)")
    warm_up(pipe, args.batch_size, args.guidance, num_classes)
    if args.steps is None:
        from ..pipelines.pipeline import DEFAULT_STEPS

        args.steps = int(pipe.info.get("default_steps") or DEFAULT_STEPS)
    codes: list = []
    fake, fake_labels, spi = generate_images(pipe, args.num_samples, args.batch_size, args.steps, args.guidance, args.seed, num_classes,
                                             progress, codes_out=codes)
    fake_f = extractor(fake, progress, "features (generated)")
    result = distribution_metrics(real_f, fake_f, args.kid_subsets, args.kid_subset_size, args.seed)

    # the scale FID / KID are read on: as many other held-out images as were generated, those blurred /
    # noised, each vs the same real reference (computed once; again for the sweep only at another count)
    def calibrate(n_measured: int) -> tuple[list[dict], dict]:
        probe, probe_desc = other_real_images(ds, real_idx, n_measured, args.seed)
        rows = calibration_rows(real, probe, extractor, ref_features=real_f, kid_subsets=args.kid_subsets,
                                kid_subset_size=args.kid_subset_size, seed=args.seed, progress=progress) if probe is not None else []
        return rows, calibration_setup(f"the same {real_f.shape[0]} held-out real images", probe_desc, paired=False)

    calibration, setup = calibrate(fake_f.shape[0])
    result["fid_scale"] = place_on_scale(result["fid"], calibration, "fd")
    result["kid_scale"] = place_on_scale(result["kid_mean"], calibration, "kid_mean")

    # codebook report of a prior: which codes it emits, against the codes the autoencoder uses on real data
    code_usage = prior_code_usage(pipe, torch.cat(codes), real, args.batch_size) if prior_kind else None

    # class accuracy: a domain classifier with the same classes judges each generated image's class
    class_acc = None
    if num_classes:
        classifier = extractor if extractor.num_classes == num_classes else None
        if classifier is None:
            try:
                candidate = load_feature_extractor("fashion-mnist-detail", args.batch_size, device)
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

    sweep_rows, sweep_calibration, sweep_setup = [], None, None
    if sweep:
        sweep_calibration, sweep_setup = (calibration, setup) if args.sweep_samples == fake_f.shape[0] else calibrate(args.sweep_samples)
        sweep_rows = sweep_steps(pipe, real_f, extractor, sweep_schedulers, sweep, args.sweep_samples,
                                 args.batch_size, args.guidance, args.seed, num_classes, args.kid_subsets, args.kid_subset_size, progress,
                                 calibration=sweep_calibration)
        plots["fid_vs_steps"] = plot_steps_sweep(sweep_rows, out / "fid_vs_steps.png",
                                                 f"FID vs steps ({args.sweep_samples} generated vs {real_f.shape[0]} real, {extractor.name})").name

    report = {
        "mode": "generation",
        "model": args.model or "shipped",
        "data": ds.source,
        "features": extractor.name,
        "feature_dim": extractor.dim,
        "steps": args.steps,
        "scheduler": scheduler_label(pipe),
        "guidance": args.guidance if num_classes else None,
        "num_classes": num_classes,
        "seed": args.seed,
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
        "environment": _environment(device),
    }
    atomic_write_json(out / "report.json", _jsonable(report))

    n_f, n_r = result["num_generated"], result["num_real"]
    print(f"generation {report['model']} ({report['scheduler']}, {args.steps} steps{', guidance ' + str(args.guidance) if num_classes else ''}) vs held-out {ds.source}:")
    print(f"  FID {result['fid']:.3f}   ({n_f} generated vs {n_r} real images, {extractor.name} features, {extractor.dim}-d)")
    print(format_calibration(calibration, setup, "FID", result["fid"]))
    print(f"  KID {format_kid(result)}   ({result['kid_subsets']} subsets of {result['kid_subset_size']})")
    if calibration:
        print(f"    KID {format_value(result['kid_mean'])} on the scale above (its KID column): {result['kid_scale']}")
    if "precision" in result:
        print(f"  precision {result['precision']:.3f}   recall {result['recall']:.3f}   (k=3, {n_f} generated vs {n_r} real)")
    if class_acc:
        print(f"  class accuracy {100 * class_acc['class_accuracy']:.1f}% of {n_f} generated images "
              f"(classifier: {100 * class_acc['classifier_accuracy_on_real']:.1f}% on {n_r} real)")
    elif num_classes:
        print("  class accuracy: - (no domain classifier with matching classes; pass --features with one)")
    if code_usage:
        print(f"  codes emitted by the prior: {code_usage['codes_emitted']}/{code_usage['codebook_size']} over {code_usage['samples']} samples; "
              f"{100 * code_usage['emitted_share_of_real_usage']:.1f}% of the {code_usage['codes_used_on_real']} codes the autoencoder "
              f"uses on {code_usage['real_images']} real images ({code_usage['emitted_outside_real_usage']} emitted outside them)")
    print(f"  {spi:.4f} s per image on {device} ({torch.get_num_threads()} threads)")
    if sweep_rows:
        print(format_sweep_table(sweep_rows))
        if sweep_calibration is calibration:
            print(f"  sweep calibration: the one above ({args.sweep_samples} images per point, as many as generated above)")
        else:
            print(f"  sweep calibration ({args.sweep_samples} images per point):")
            print(format_calibration(sweep_calibration, sweep_setup))
    print(f"report: {out / 'report.json'}  plots: {', '.join(plots.values())}")
    return 0
