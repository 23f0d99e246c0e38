"""Stage 3: the VQ latent diffusion pipeline, the ``vqldm`` command line, and evaluation.

``from vqldm.pipelines import VQLatentDiffusionPipeline, load_pipeline`` (imported lazily, so ``vqldm --help``
does not pay for importing diffusers).
"""

__all__ = ["VQLatentDiffusionPipeline", "load_pipeline", "make_scheduler"]


def __getattr__(name):
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
