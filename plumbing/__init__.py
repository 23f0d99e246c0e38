"""The bottom layer: plumbing used by every stage, and nothing specific to one.

``errors`` (UserError), ``config`` (YAML presets -> typed dataclasses), ``checkpoint`` (atomic writes,
safetensors-only loading, training checkpoints), ``data`` (image folders and named datasets),
``images`` (grids and PNG files), ``runs`` (run folders, console lines, metrics logs), ``geometry``
(latent shapes, class counts, latent scaling), ``trainkit`` (what both training loops share: accelerator,
learning-rate schedule, optimizer step, NaN policy, stop-on-signal, resume, train time).
Nothing here imports a stage.
"""
