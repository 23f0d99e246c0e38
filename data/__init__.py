"""Images in: where they come from and how a training loop reads them. About no stage.

``config`` (the ``data`` section of a run config), ``sources`` (``--data``: image folders, ``hf:NAME``
datasets, tar shards, named datasets), ``shards`` (webdataset tar shards: index, map-style reads, the
shard-aware batch order, ``vqldm shard``), ``folder_index`` (a folder indexed once; broken files skipped and counted),
``decode`` (file -> fitted uint8 array), ``captions`` (a caption per image, for text-to-image: where each
source keeps them, the checks), ``splits`` (a training or held-out set that reads itself a batch at
a time, decoded in DataLoader workers), ``loading`` (the deterministic batch order and the resumable,
augmented training stream), ``streaming`` (an ``hf:`` dataset read as a stream: its resumable order and
held-out images), ``summary`` (what ``--config auto`` reads about the data, from headers only).
"""
