"""Stage 3: the samplers. The VQ latent diffusion pipeline and the prior over codes, both behind one protocol
(``ImageSampler``) and one loader (``load_sampler``); schedulers, image/mask inputs, the frozen CPU UNet.

``from vqldm.pipelines import load_sampler, VQLatentDiffusionPipeline`` (imported lazily, so ``vqldm --help``
does not pay for importing diffusers).
"""

_WHERE = {
    "VQLatentDiffusionPipeline": "pipeline", "load_pipeline": "pipeline", "VQTextToImagePipeline": "text_pipeline",
    "VQSuperResolutionPipeline": "superres_pipeline", "make_scheduler": "schedulers",
    "CodePriorPipeline": "prior_pipeline", "load_prior_pipeline": "prior_pipeline",
    "ImageSampler": "sampler", "load_sampler": "sampler", "ModelFolderError": "sampler",
}
__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
