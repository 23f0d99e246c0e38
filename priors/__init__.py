"""Stage 2, discrete: priors over the code indices of the VQ autoencoder.

The other half of the VQ idea: instead of denoising continuous latents, model p(codes | class) directly.
``model`` (one transformer, bidirectional or causal), ``sampling`` (MaskGIT parallel decoding;
raster-order autoregressive decoding with a KV cache; ``sample_codes`` for either), ``config`` (typed run config), ``export`` (the
prior folder), ``train`` (``vqldm train-prior --kind masked|autoregressive``). Both read the code cache
(``vqldm.latents.cache.prepare_code_cache``) and decode through the same vqvae as latent diffusion.
"""
