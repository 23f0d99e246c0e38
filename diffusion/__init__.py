"""Stage 2: a UNet diffusion model trained on the VQ autoencoder's pre-quantization latents.

Modules, one concept each: ``config`` (typed run config), ``latent_cache`` (encode the data once),
``objective`` (noise schedule, targets, min-SNR weights, loss), ``model`` (UNet2DModel sized from the
vqvae), ``ema`` (weight averaging), ``sampling`` (the denoising loop), ``export`` (pipeline folder),
``train`` (``vqldm train-diffusion``). Nothing here imports ``pipelines``.
"""
