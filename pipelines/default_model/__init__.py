"""The small class-conditional Fashion-MNIST pipeline shipped with vqldm (the embedded default)."""
