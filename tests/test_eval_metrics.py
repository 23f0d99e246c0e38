"""Invariants of the distribution and codebook metrics (vqldm.evaluation.metrics), on synthetic features."""

import pytest
import torch

from vqldm.evaluation import metrics


def _gaussian(n, d, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = _gaussian(500, 16)
    assert metrics.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_grows_with_the_shift():
    x = _gaussian(2000, 8, seed=0)
    values = [metrics.fid_from_features(x, _gaussian(2000, 8, shift=s, seed=1)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values)
    assert values[0] < 0.1
    # a mean shift of s in all 8 dimensions adds 8 s^2
    assert values[2] == pytest.approx(8.0, rel=0.1)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.zeros(3, dtype=torch.float64), torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    s1, s2 = torch.diag(torch.tensor([1.0, 4.0, 9.0])).double(), torch.diag(torch.tensor([4.0, 1.0, 1.0])).double()
    # diagonal: sum (sqrt(a) - sqrt(b))^2 + |mu1 - mu2|^2 = (1 + 1 + 4) + 5
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(11.0, abs=1e-9)


def test_frechet_distance_handles_singular_covariances():
    x = _gaussian(10, 64)  # fewer samples than dimensions: rank-deficient covariance
    value = metrics.fid_from_features(x, x + 0.1)
    assert value == pytest.approx(64 * 0.01, rel=1e-6)


def test_kid_near_zero_for_same_distribution_and_grows_with_shift():
    x, y = _gaussian(400, 16, seed=0), _gaussian(400, 16, seed=1)
    same, std_same = metrics.kernel_inception_distance(x, y, num_subsets=20, subset_size=200)
    shifted, _ = metrics.kernel_inception_distance(x, _gaussian(400, 16, shift=1.0, seed=1), num_subsets=20, subset_size=200)
    far, _ = metrics.kernel_inception_distance(x, _gaussian(400, 16, shift=2.0, seed=1), num_subsets=20, subset_size=200)
    assert abs(same) < 3 * std_same + 1e-3  # unbiased: centred on 0 for equal distributions
    assert same < shifted < far


def test_precision_recall_sanity():
    real = _gaussian(600, 4, seed=0)
    same = _gaussian(600, 4, seed=1)
    p, r = metrics.precision_recall(real, same)
    assert p > 0.8 and r > 0.8
    # generated samples collapsed onto a small part of the real distribution: precise, poor recall
    collapsed = real[:30] + 0.01 * _gaussian(30, 4, seed=2)
    p, r = metrics.precision_recall(real, collapsed.repeat(20, 1))
    assert p > 0.9 and r < 0.3
    # far away: neither
    p, r = metrics.precision_recall(real, _gaussian(600, 4, shift=10.0, seed=3))
    assert p == 0.0 and r == 0.0


def test_nmi_is_one_when_codes_determine_the_label():
    labels = torch.arange(300) % 3
    indices = (labels * 5)[:, None, None].repeat(1, 2, 2)  # class c always uses code 5c
    counts = metrics.code_class_counts(indices, labels, num_codes=16, num_classes=3)
    assert metrics.normalized_mutual_information(counts) == pytest.approx(1.0, abs=1e-9)
    assert metrics.normalized_mutual_information(counts, "arithmetic") == pytest.approx(1.0, abs=1e-9)


def test_nmi_is_one_for_class_exclusive_codes():
    # each class uses its own pair of codes: codes determine the class (NMI < 1 under geometric because H(C) > H(Y))
    labels = torch.arange(400) % 4
    g = torch.Generator().manual_seed(0)
    indices = (2 * labels[:, None] + torch.randint(0, 2, (400, 16), generator=g)).view(400, 4, 4)
    report = metrics.per_class_code_report(indices, labels, 8, ["a", "b", "c", "d"])
    assert report["codes_per_class"] == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert report["exclusive_codes_per_class"] == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert report["codes_shared_by_all_classes"] == 0
    # I = H(Y) = ln 4, H(C) = ln 8: geometric NMI = sqrt(2/3)
    assert report["nmi"] == pytest.approx((2 / 3) ** 0.5, abs=0.01)


def test_nmi_is_near_zero_for_independent_codes():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (2000,), generator=g)
    indices = torch.randint(0, 32, (2000, 4, 4), generator=g)
    counts = metrics.code_class_counts(indices, labels, 32, 10)
    assert metrics.normalized_mutual_information(counts) < 0.01
    report = metrics.per_class_code_report(indices, labels, 32, [str(i) for i in range(10)])
    assert report["codes_shared_by_all_classes"] == 32


def test_code_class_counts_ignores_unlabelled_images():
    indices = torch.tensor([[[0, 1]], [[2, 3]]])
    counts = metrics.code_class_counts(indices, torch.tensor([0, -1]), num_codes=4, num_classes=1)
    assert counts.tolist() == [[1, 1, 0, 0]]


def test_frechet_distance_agrees_with_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    x, y = _gaussian(300, 12, seed=0), _gaussian(300, 12, seed=1) @ torch.randn(12, 12, generator=torch.Generator().manual_seed(2)).double()
    mu1, s1 = metrics.feature_statistics(x)
    mu2, s2 = metrics.feature_statistics(y)
    covmean = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * float(covmean.trace()))
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_mmd2_agrees_with_torchmetrics_for_equal_sizes():
    kid = pytest.importorskip("torchmetrics.image.kid")
    x, y = _gaussian(50, 8, seed=0), _gaussian(50, 8, shift=0.3, seed=1)
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(float(kid.poly_mmd(x, y, degree=3, gamma=None, coef=1.0)), rel=1e-9)
