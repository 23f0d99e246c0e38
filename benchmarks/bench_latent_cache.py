"""Training throughput with the latent cache vs encoding every batch through the vqvae on the fly.

Same UNet (same initial weights), same batches, same noise, same objective, in one process; only where
the latents come from differs. Prints a table (median images/s over the repeats) and the ratio.

    python benchmarks/bench_latent_cache.py                       # fresh fashion-mnist vqvae, 2 CPU cores: minutes
    python benchmarks/bench_latent_cache.py --autoencoder runs/ae --steps 20 --repeats 5

Without ``--autoencoder`` a freshly initialised vqvae of the autoencoder preset is used: encoding cost
does not depend on the weights. The one-off cost of building the cache is printed too, with the number
of training steps after which it has paid for itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqldm.data.splits import Datasets
from vqldm.data.sources import load_datasets
from vqldm.autoencoder.model import build_vqmodel  # noqa: E402
from vqldm.autoencoder.config import load_autoencoder_config  # noqa: E402
from vqldm.latents.cache import prepare_latent_cache
from vqldm.diffusion.model import build_unet  # noqa: E402
from vqldm.autoencoder.model import latent_shape, scale_latents
from vqldm.diffusion.objective import (  # noqa: E402
    diffusion_loss,
    make_train_scheduler,
    min_snr_weights,
    sample_noise_and_timesteps,
    training_target,
)
from vqldm.autoencoder.model import load_vqvae  # noqa: E402
from vqldm.diffusion.config import load_diffusion_config
from vqldm.latents.setup import resolve_latent_data


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="fashion-mnist", help="diffusion config (preset name or YAML)")
    p.add_argument("--autoencoder", default=None, help="trained autoencoder run / VQModel folder (default: fresh vqvae)")
    p.add_argument("--ae-config", default="fashion-mnist", help="autoencoder preset for the fresh vqvae")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--images", type=int, default=2048, help="training images to cache / sample batches from")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's train.batch_size")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_diffusion_config(args.config)
    if args.autoencoder:
        ae = load_vqvae(args.autoencoder)
        vqvae, ae_data = ae.vqvae, ae.data
        data_cfg = resolve_latent_data(cfg.data, ae_data, vqvae.config)
    else:
        ae_cfg = load_autoencoder_config(args.ae_config)
        torch.manual_seed(0)
        vqvae = build_vqmodel(ae_cfg.model, ae_cfg.data.image_size, ae_cfg.data.channels).eval().requires_grad_(False)
        data_cfg = resolve_latent_data(cfg.data, {k: getattr(ae_cfg.data, k) for k in ("image_size", "channels", "fit")}, vqvae.config)
    data_cfg.max_images = args.images
    datasets = load_datasets(args.data, data_cfg, progress=False)
    datasets = Datasets(datasets.train, datasets.train, source=datasets.source)  # no holdout needed here
    batch = args.batch_size or cfg.train.batch_size
    latent = latent_shape(vqvae.config, data_cfg.image_size)
    num_classes = datasets.train.num_classes if cfg.model.class_conditional else 0

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = prepare_latent_cache(tmp, vqvae, datasets, cfg.cache, data_cfg.image_size, data_cfg.channels, data_cfg.fit,
                                     log=lambda m: None, progress=False)
        build_seconds = time.perf_counter() - t0

    torch.manual_seed(cfg.train.seed)
    init = build_unet(cfg.model, latent, num_classes).state_dict()
    scheduler = make_train_scheduler(cfg.objective)
    oc = cfg.objective
    n = len(datasets.train)

    def cached(idx):
        return cache.train.batch(idx)

    @torch.no_grad()
    def on_the_fly(idx):
        x, y = datasets.train.batch(idx)
        return scale_latents(vqvae.encode(x).latents, vqvae), y

    def run(get_batch) -> float:
        unet = build_unet(cfg.model, latent, num_classes)
        unet.load_state_dict(init)
        unet.train()
        opt = torch.optim.AdamW(unet.parameters(), lr=cfg.train.lr, betas=cfg.train.adam_betas)
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(n, generator=g)

        def step(i):
            idx = order[(torch.arange(batch) + i * batch) % n]
            x0, y = get_batch(idx)
            noise, t = sample_noise_and_timesteps(x0, oc.num_train_timesteps, g)
            labels = y if num_classes else None
            pred = unet(scheduler.add_noise(x0, noise, t), t, class_labels=labels).sample
            loss = diffusion_loss(pred, training_target(oc.prediction_type, x0, noise, t, scheduler),
                                  min_snr_weights(scheduler, t, oc.prediction_type, oc.min_snr_gamma))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step(0)  # warm-up (allocator, kernels)
        start = time.perf_counter()
        for i in range(1, args.steps + 1):
            step(i)
        return args.steps * batch / (time.perf_counter() - start)

    results = {"latent cache": [], "encode on the fly": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit both alike
        results["latent cache"].append(run(cached))
        results["encode on the fly"].append(run(on_the_fly))
    median = {k: statistics.median(v) for k, v in results.items()}
    ratio = median["latent cache"] / median["encode on the fly"]
    per_image_saved = 1 / median["encode on the fly"] - 1 / median["latent cache"]
    break_even = build_seconds / (per_image_saved * batch) if per_image_saved > 0 else float("inf")

    print(f"\nlatent-cache benchmark: config {args.config!r}, {'vqvae ' + args.autoencoder if args.autoencoder else 'fresh ' + args.ae_config + ' vqvae'}, "
          f"{data_cfg.image_size}px x{data_cfg.channels} -> latents {tuple(latent)}, batch {batch}, {args.steps} steps x {args.repeats} repeats, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'mode':<20}{'median images/s':>18}{'all repeats':>40}")
    for k, v in results.items():
        print(f"{k:<20}{median[k]:>18.1f}{', '.join(f'{x:.1f}' for x in v):>40}")
    print(f"ratio (cache / on the fly): {ratio:.2f}x")
    print(f"one-off cache build for {n} images: {build_seconds:.1f}s (pays for itself after ~{break_even:.0f} steps)")
    return {"median_images_per_s": median, "ratio": ratio, "build_seconds": build_seconds, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
