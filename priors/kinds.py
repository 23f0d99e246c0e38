"""The prior kinds, in a module of their own so that the CLI's parser names them without importing torch."""

KINDS = ("masked", "autoregressive")  # MaskGIT-style parallel decoding; raster-order autoregressive
