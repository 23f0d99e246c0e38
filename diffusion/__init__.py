"""Stage 2: a UNet diffusion model trained on the VQ autoencoder's pre-quantization latents.

Modules, one concept each: ``config`` (typed run config), ``objective`` (noise schedule, targets,
min-SNR weights, loss), ``model`` (UNet2DModel sized from the vqvae), ``sampling`` (the denoising loop),
``export`` (pipeline folder), ``train`` (``vqldm train-diffusion``). The latent cache and EMA are shared
with the priors and live in ``vqldm.plumbing``. Nothing here imports ``pipelines``.
"""
