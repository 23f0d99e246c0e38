"""Measuring models: features, distribution metrics with their calibration, reports and plots.

``features`` (feature networks: the shipped domain classifiers in ``networks/``, Inception when
available), ``metrics`` (FD, KID, precision/recall, codebook statistics), ``report`` (reconstruction and
generation measurements, with the calibration rows every FD/KID is read against), ``plots``.
"""
