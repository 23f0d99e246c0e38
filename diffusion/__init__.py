"""Stage 2: a UNet diffusion model trained on the VQ autoencoder's pre-quantization latents."""
