"""Images in: where they come from and how a training loop reads them. About no stage.

``config`` (the ``data`` section of a run config), ``sources`` (``--data``: image folders, ``hf:NAME``
datasets, named datasets), ``folder_index`` (a folder indexed once; broken files skipped and counted),
``decode`` (file -> fitted uint8 array), ``splits`` (a training or held-out set that reads itself a batch at
a time, decoded in DataLoader workers), ``loading`` (the deterministic batch order and the resumable,
augmented training stream), ``summary`` (what ``--config auto`` reads about the data, from headers only).
"""
