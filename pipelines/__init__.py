"""Stage 3: the VQ latent diffusion pipeline, the ``vqldm`` command line, and evaluation."""
