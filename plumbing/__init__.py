"""The bottom layer: what every stage uses and nothing specific to one.

``errors`` (UserError), ``config`` (YAML presets -> typed dataclasses), ``checkpoint`` (atomic writes,
safetensors-only loading, training checkpoints), ``tensorfile`` (one memory-mapped safetensors file written
batch by batch), ``runs`` (run folders, console lines, metrics logs), ``trainkit`` (what every training
loop shares: accelerator, learning-rate schedule, optimizer step, NaN policy, stop-on-signal, resume,
train time, decisions agreed across processes), ``ema``, ``images`` (grids and image files),
``model_folder`` (``vqldm.json`` of exported folders), ``autosize`` (the sizing rules ``--config auto``
shares). Nothing here imports a stage or ``data``.
"""
