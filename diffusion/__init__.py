"""Stage 2: a UNet diffusion model trained on the VQ autoencoder's pre-quantization latents.

Modules, one concept each: ``config`` (typed run config, ``--config auto`` rules), ``objective`` (noise
schedule, targets, min-SNR weights, loss), ``model`` (UNet2DModel sized from the vqvae, the null-class
rule), ``sampling`` (the denoising loop, sample grids), ``export`` (pipeline folder), ``train``
(``vqldm train-diffusion``). The setup it shares with the priors (cache, data, run folder) is in
``vqldm.latents``. Nothing here imports ``pipelines``.
"""
