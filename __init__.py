"""vqldm: latent diffusion on a VQ-compressed space.

The installed package is ``vqldm``; its sub-packages are the repository's top-level folders
(``vqldm.autoencoder`` -> ``autoencoder/``, ...), mapped by setuptools' ``package-dir`` in pyproject.toml.
Dependencies point one way: cli -> evaluation -> pipelines -> (diffusion | priors) -> latents ->
autoencoder -> data -> plumbing.

``from vqldm import VQLatentDiffusionPipeline, VQTextToImagePipeline, load_pipeline`` (imported lazily, so ``import vqldm``
stays cheap).
"""

__version__ = "0.1.0"
__all__ = ["VQLatentDiffusionPipeline", "VQTextToImagePipeline", "VQSuperResolutionPipeline", "load_pipeline",
           "ResidualVQModel", "__version__"]


def __getattr__(name):
    # ``["vqldm", "ResidualVQModel"]`` in a model_index.json: diffusers imports ``vqldm``, takes the class, and
    # picks its loading method by which of its base classes (ModelMixin) this module also names
    if name in ("ResidualVQModel", "ModelMixin"):
        from .autoencoder import multistage

        return getattr(multistage, name)
    if name in ("VQLatentDiffusionPipeline", "VQTextToImagePipeline", "VQSuperResolutionPipeline", "load_pipeline"):
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'vqldm' has no attribute {name!r}")
