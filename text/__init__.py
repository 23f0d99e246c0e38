"""Text conditioning: captions -> token ids -> a text encoder's hidden states, the context a text-conditional
latent UNet attends to (cross-attention). ``transformers`` is imported only here, and only for text models
(``pip install 'vqldm[text]'``)."""
