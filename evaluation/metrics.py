"""Distribution metrics on feature sets, and codebook-vs-class statistics.

Feature sets are float tensors N x D (one row per image, from :mod:`.features`). All statistics
are computed in float64. Every function is pure: features in, numbers out.

* Fréchet distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule"): the 2-Wasserstein
  distance between Gaussians fitted to two feature sets.
* KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): unbiased MMD² with the cubic polynomial kernel,
  averaged over random subsets; unlike FID it is unbiased in the sample count.
* Precision / recall (Kynkäänniemi et al. 2019, "Improved precision and recall metric"): k-NN manifolds.
  ``distribution_metrics`` gives all three with their sample counts, as every report states them.
* Normalized mutual information between code indices and class labels (Strehl & Ghosh 2002).
"""

from __future__ import annotations

import math

import torch


# ----------------------------------------------------------------------------- Fréchet distance
def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D) and unbiased covariance (D x D) of N x D features, in float64."""
    f = features.detach().double().cpu()
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need an N x D feature matrix with N >= 2, got shape {tuple(f.shape)}")
    mu = f.mean(dim=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def _clean_eigenvalues(vals: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a PSD matrix: rounding noise (negative, or below D * eps * max) set to exactly 0, so that
    rank-deficient covariances (fewer samples than dimensions) do not add sqrt(noise) terms."""
    tol = vals.abs().max().clamp(min=1e-300) * vals.numel() * torch.finfo(vals.dtype).eps
    return torch.where(vals > tol, vals, torch.zeros_like(vals))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via its eigendecomposition."""
    vals, vecs = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * _clean_eigenvalues(vals).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½).

    Tr((S1 S2)^½) is computed as Tr((S1^½ S2 S1^½)^½): the two matrices are similar, and the second is
    symmetric PSD, so its eigenvalues are real and non-negative up to rounding (clamped at 0). This avoids
    ``scipy.linalg.sqrtm``'s complex output with tiny imaginary parts on near-singular covariances.
    """
    mu1, mu2, sigma1, sigma2 = (t.double().cpu() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = _clean_eigenvalues(torch.linalg.eigvalsh((middle + middle.T) / 2))
    trace_sqrt = eig.sqrt().sum()
    diff = mu1 - mu2
    value = diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * trace_sqrt
    return max(float(value), 0.0)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between two N x D feature sets (FID when the features are Inception pool3)."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))


# ----------------------------------------------------------------------------- KID
def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x·y / D + 1)³ — the kernel of Bińkowski et al. 2018, sec. 3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² estimate (Gretton et al. 2012, eq. 3): diagonal terms of k(x,x), k(y,y) excluded."""
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def kid_subset_size_used(subset_size: int, n_real: int, n_fake: int) -> int:
    """The subset size KID draws: ``subset_size``, or half the smaller set when a set is not larger."""
    smaller = min(n_real, n_fake)
    return subset_size if smaller > subset_size else max(2, smaller // 2)


def kernel_inception_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and std of unbiased MMD² over ``num_subsets`` random subsets (without replacement within
    a subset) of ``subset_size`` rows from each set (Bińkowski et al. use 1000). When a set has no more than
    ``subset_size`` rows, subsets of half the smaller set are used, so that they differ and the std is
    meaningful; the estimate stays unbiased either way."""
    real, fake = real.detach().double().cpu(), fake.detach().double().cpu()
    size = kid_subset_size_used(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_subsets):
        i = torch.randperm(real.shape[0], generator=g)[:size]
        j = torch.randperm(fake.shape[0], generator=g)[:size]
        values.append(mmd2_unbiased(real[i], fake[j]))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=True)) if len(values) > 1 else 0.0


# ----------------------------------------------------------------------------- precision / recall
def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (the row itself excluded)."""
    radii = []
    for start in range(0, features.shape[0], chunk):
        d = torch.cdist(features[start : start + chunk], features)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 1st smallest is the point itself (distance 0)
    return torch.cat(radii)


def _fraction_inside(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of ``queries`` inside at least one ball B(points_i, radii_i)."""
    inside = 0
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start : start + chunk], points)
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), k = 3 as in the paper.

    Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest
    neighbour. Precision: fraction of generated samples inside the real manifold (fidelity). Recall:
    fraction of real samples inside the generated manifold (coverage).
    """
    real, fake = real.detach().float().cpu(), fake.detach().float().cpu()
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall needs more than k={k} samples in each set")
    precision = _fraction_inside(fake, real, _kth_neighbour_radii(real, k))
    recall = _fraction_inside(real, fake, _kth_neighbour_radii(fake, k))
    return precision, recall


# ----------------------------------------------------------------------------- all three at once
def distribution_metrics(real_f: torch.Tensor, fake_f: torch.Tensor, kid_subsets: int = 100, kid_subset_size: int = 1000,
                         seed: int = 0, with_pr: bool = True) -> dict:
    """FID, KID (mean, std) and precision/recall between two feature sets, with the sample counts."""
    kid_mean, kid_std = kernel_inception_distance(real_f, fake_f, kid_subsets, kid_subset_size, seed)
    out = {"fid": fid_from_features(real_f, fake_f), "kid_mean": kid_mean, "kid_std": kid_std,
           "kid_subset_size": kid_subset_size_used(kid_subset_size, real_f.shape[0], fake_f.shape[0]), "kid_subsets": kid_subsets,
           "num_real": int(real_f.shape[0]), "num_generated": int(fake_f.shape[0])}
    if with_pr and min(real_f.shape[0], fake_f.shape[0]) > 3:
        out["precision"], out["recall"] = precision_recall(real_f, fake_f, k=3)
    return out


# ----------------------------------------------------------------------------- codes vs classes
def code_class_counts(indices: torch.Tensor, labels: torch.Tensor, num_codes: int, num_classes: int) -> torch.Tensor:
    """Joint counts num_classes x num_codes of (class of the image, code at a latent position).

    ``indices`` is B x h x w (or B x L) code indices, ``labels`` is B class labels; every latent position
    counts once for its image's label. Images with label < 0 (unlabelled) are ignored.
    """
    b = indices.shape[0]
    flat = indices.reshape(b, -1).long().cpu()
    labels = labels.long().cpu()
    keep = labels >= 0
    flat, labels = flat[keep], labels[keep]
    pair = labels[:, None] * num_codes + flat
    return torch.bincount(pair.flatten(), minlength=num_classes * num_codes).view(num_classes, num_codes)


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def normalized_mutual_information(joint_counts: torch.Tensor, normalization: str = "geometric") -> float:
    """NMI between class Y (rows) and code C (columns) from a joint count table.

    I(C; Y) = H(C) + H(Y) - H(C, Y) in nats. ``geometric``: I / sqrt(H(C) H(Y)) (Strehl & Ghosh 2002);
    ``arithmetic``: 2 I / (H(C) + H(Y)) (scikit-learn's default). 1 when the code determines the class and
    vice versa; ~0 when they are independent (the plug-in estimate is biased up by about
    (#codes - 1)(#classes - 1) / (2 N ln 2) bits for N positions).
    Returns 0 when either variable is constant.
    """
    joint = joint_counts.double()
    total = joint.sum()
    if total <= 0:
        return 0.0
    p = joint / total
    h_y, h_c, h_cy = _entropy(p.sum(dim=1)), _entropy(p.sum(dim=0)), _entropy(p.flatten())
    mi = max(h_c + h_y - h_cy, 0.0)
    if normalization == "geometric":
        denom = math.sqrt(h_c * h_y)
    elif normalization == "arithmetic":
        denom = (h_c + h_y) / 2
    else:
        raise ValueError(f"normalization must be 'geometric' or 'arithmetic', got {normalization!r}")
    return float(min(mi / denom, 1.0)) if denom > 0 else 0.0


def per_class_code_report(
    indices: torch.Tensor,
    labels: torch.Tensor,
    num_codes: int,
    class_names: list[str],
    normalization: str = "geometric",
) -> dict:
    """How many codes each class uses, how many are shared by all classes, and NMI(codes; classes)."""
    counts = code_class_counts(indices, labels, num_codes, len(class_names))
    used = counts > 0
    per_class = {name: int(used[i].sum()) for i, name in enumerate(class_names)}
    present = counts.sum(dim=1) > 0
    exclusive = (used & (used.sum(dim=0, keepdim=True) == 1)).sum(dim=1)
    return {
        "codes_per_class": per_class,
        "exclusive_codes_per_class": {name: int(exclusive[i]) for i, name in enumerate(class_names)},
        "codes_shared_by_all_classes": int(used[present].all(dim=0).sum()) if bool(present.any()) else 0,
        "nmi": normalized_mutual_information(counts, normalization),
        "nmi_normalization": "I(C;Y)/sqrt(H(C)H(Y))" if normalization == "geometric" else "2I(C;Y)/(H(C)+H(Y))",
        "positions": int(counts.sum()),
        "counts": counts,
    }
