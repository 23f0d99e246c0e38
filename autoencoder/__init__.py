"""Stage 1: a VQ autoencoder that compresses images to a grid of codebook vectors (exports a diffusers VQModel).

Modules: ``config`` (typed run config), ``model`` (VQModel builder, training wrapper, the loader
``load_vqvae``), ``quantizer`` (EMA vector quantizer), ``losses``, ``metrics``, ``evaluate``, ``train``.
"""
