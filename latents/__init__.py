"""What stage 2 learns from: the autoencoder's latents and codes of the training images.

``cache`` (latents and code indices encoded once, keyed by the data index and the vqvae's weights, read
memory-mapped by every process), ``setup`` (the one setup both latent-stage trainers share: autoencoder,
data geometry, model, run folder, cache, batch order), ``guidance`` (label dropout to the null class for
classifier-free guidance). Imports the autoencoder's model; imported by ``diffusion`` and ``priors``.
"""
