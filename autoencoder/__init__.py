"""Stage 1: a VQ autoencoder that compresses images to a grid of codebook vectors (exports a diffusers VQModel).

Modules: ``model`` (VQModel builder, training wrapper, the loader ``load_vqvae``, latent geometry and
scaling), ``quantizer`` (EMA vector quantizer; ``simvq``, ``fsq``, ``rotation``, ``growing`` beside it, and
``multistage``: residual / hierarchical quantizers and their ``ResidualVQModel``), ``losses``, ``metrics``, ``evaluate`` (held-out
reconstruction, the scaling factor), ``config`` (typed run config and its ``--config auto`` rules),
``train`` (``vqldm train-autoencoder``). Other stages import ``model``, ``quantizer`` and ``losses`` only.
"""
