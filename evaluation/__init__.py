"""Measuring models: feature networks, distribution metrics, their calibration, reports and plots.

One module per question a reader brings:

* ``features``: the feature networks (the shipped domain classifiers in ``networks/``, Inception when
  available) and ``load_feature_extractor``; ``feature_training``: the loop that trains a domain classifier.
* ``metrics``: FD, KID, precision/recall, codes-vs-classes statistics (pure: features in, numbers out).
* ``reference``: the real side of every comparison (held-out split, fixed subsets, disjoint others).
* ``calibration``: the scale every FD / KID is read on (real-vs-real floor, blur, noise) and ``place_on_scale``.
* ``reconstruction``: ``evaluate_autoencoder``; ``generation``: sampling sets, step sweeps, ``evaluate_generation``.
* ``report``: report.json (environment, JSON-safe values, the atomic write); ``plots``: the PNG figures.
"""
