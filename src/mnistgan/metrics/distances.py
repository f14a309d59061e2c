"""The metric math: small pure functions on evaluator features and class probabilities.

``real`` and ``fake`` are feature matrices (N, D): rows are images, columns the evaluator's 128
feature dimensions. Probabilities are (N, 10) softmax outputs. Inputs may be float32; what
cancels or accumulates runs in float64: FD (covariances, eigenvalues), every KID sum, the
classifier score and the class statistics. k-NN distances are float32 (see squared_distances).

k-nearest-neighbour metrics never build an N x M distance matrix at once: they walk over the
rows in chunks of ``CHUNK_ROWS`` (1,000 x 10,000 float32 distances = 40 MB).
"""

from __future__ import annotations

import math

import torch

CHUNK_ROWS = 1000  # rows of a distance matrix computed at a time
PRECISION_RECALL_K = 3  # Kynkäänniemi et al. (2019): the k of the k-NN balls
DENSITY_COVERAGE_K = 5  # Naeem et al. (2020): the k of the k-NN balls
KID_SUBSETS = 100  # KID: number of random subsets averaged
KID_SUBSET_SIZE = 1000  # KID: images per subset (fewer if a set is smaller)
# A digit is "covered" if at least 2% of samples are classified as it: a fifth of the uniform 10%.
# Ordinary imbalance (real MNIST digits hold 9-11%) and sampling noise (+-0.3% at N = 10,000) stay
# far above it; a digit the generator has all but dropped falls below it.
COVERED_SHARE = 0.02
# A sample is "confident" if the evaluator's top probability is at least this (99% of real test
# digits are).
CONFIDENT_PROBABILITY = 0.9


# ----------------------------------------------------------------------------------------------
# Fréchet distance


def gaussian_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    features = features.double()
    mean = features.mean(dim=0)
    centred = features - mean
    covariance = centred.T @ centred / (len(features) - 1)
    return mean, covariance


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition.

    Rounding can leave tiny negative eigenvalues on a PSD matrix; they are clamped to 0.
    """
    matrix = (matrix + matrix.T) / 2  # exact symmetry for eigh
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Fréchet distance between N(mean1, cov1) and N(mean2, cov2).

    FD = |mean1 - mean2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1^1/2 cov2 cov1^1/2)^1/2).
    The symmetric form cov1^1/2 cov2 cov1^1/2 is PSD, so its trace-root is a sum of square roots
    of (clamped) eigenvalues; no general, possibly complex, matrix square root is needed.
    """
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    root1 = sqrtm_psd(cov1)
    middle = root1 @ cov2 @ root1
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_root
    return max(0.0, distance.item())  # rounding can take an FD of identical sets a hair below 0


def frechet_distance_of_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FD between Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance(*gaussian_statistics(real), *gaussian_statistics(fake))


# ----------------------------------------------------------------------------------------------
# Kernel inception distance


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x . y / D + 1)^3 for (..., N, D) and (..., M, D) -> (..., N, M), in the inputs' dtype."""
    return (x @ y.mT).mul_(1.0 / x.shape[-1]).add_(1.0).pow_(3)  # in place: one (N, M) buffer


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of MMD^2 between the distributions of two equally sized (m, D) samples.

    Batched: (S, m, D) inputs give S estimates, shape (S,). Kernel entries are computed in the
    inputs' dtype (float32 features change KID by about 1e-9, far below its spread over subsets,
    at a third less time); every sum is taken in float64.
    """
    m = x.shape[-2]

    def off_diagonal_mean(kernel: torch.Tensor) -> torch.Tensor:
        # Leave out k(x_i, x_i): it pairs a sample with itself and would bias the estimate.
        total = kernel.sum(dim=(-2, -1), dtype=torch.float64)
        return (total - kernel.diagonal(dim1=-2, dim2=-1).sum(dim=-1, dtype=torch.float64)) / (m * (m - 1))

    within_x = off_diagonal_mean(polynomial_kernel(x, x))
    within_y = off_diagonal_mean(polynomial_kernel(y, y))
    across = polynomial_kernel(x, y).sum(dim=(-2, -1), dtype=torch.float64) / (m * m)
    return within_x + within_y - 2 * across


def kernel_inception_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD^2 over random subsets.

    Each subset draws ``min(subset_size, len(real), len(fake))`` rows from each set without
    replacement; ``seed`` fixes the draw, so the same features give the same number.
    """
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(real)} and {len(fake)}")
    generator = torch.Generator().manual_seed(seed)
    draws = [(torch.randperm(len(real), generator=generator)[:size], torch.randperm(len(fake), generator=generator)[:size]) for _ in range(subsets)]
    real_index = torch.stack([r for r, _ in draws])  # (subsets, size)
    fake_index = torch.stack([f for _, f in draws])
    # Small subsets are batched, about 1M kernel entries (4 MB) at a time: fewer, larger operations
    # cost less thread synchronisation; larger batches would spill out of the CPU caches.
    group = max(1, 1_000_000 // (size * size))
    values = torch.cat(
        [mmd2_unbiased(real[real_index[start : start + group]], fake[fake_index[start : start + group]]) for start in range(0, subsets, group)]
    )
    return values.mean().item(), (values.std().item() if subsets > 1 else 0.0)


# ----------------------------------------------------------------------------------------------
# k-nearest-neighbour manifolds: precision/recall and density/coverage


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N, D) x (M, D) -> (N, M), float32, never below 0.

    float32 is enough here: its rounding (about 1e-5 of a radius) can only move a point lying
    right on a ball's edge, which shifts these metrics by ~1e-5, far below their sampling noise,
    and it halves the time of the 10,000 x 10,000 comparisons.
    """
    a, b = a.float(), b.float()
    return (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T).clamp_(min=0)


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of (N, D) features to its k-th nearest *other* row -> (N,).

    The k+1 smallest distances of a row include the row itself (distance 0), so the (k+1)-th is
    the k-th neighbour; a duplicate image counts as a neighbour at distance 0.
    """
    if len(features) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {len(features)}")
    radii = [
        squared_distances(features[start : start + CHUNK_ROWS], features).topk(k + 1, dim=1, largest=False).values[:, k]
        for start in range(0, len(features), CHUNK_ROWS)
    ]
    return torch.cat(radii).sqrt()


def precision_recall(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = PRECISION_RECALL_K,
    real_radii: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019).

    A set's manifold is the union of balls around its points, each with the radius to that
    point's k-th nearest neighbour in the same set. Precision: the share of fake points inside the
    real manifold (are samples realistic?). Recall: the share of real points inside the fake
    manifold (is all of the data's variety produced?). ``real_radii`` may be passed precomputed.
    """
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    real_radii2, fake_radii2 = real_radii.float().square(), knn_radii(fake, k).float().square()
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool)
    for start in range(0, len(fake), CHUNK_ROWS):
        distances2 = squared_distances(fake[start : start + CHUNK_ROWS], real)  # (chunk, M)
        fake_in_real[start : start + CHUNK_ROWS] = (distances2 <= real_radii2).any(dim=1)
        real_in_fake |= (distances2 <= fake_radii2[start : start + CHUNK_ROWS, None]).any(dim=0)
    return fake_in_real.double().mean().item(), real_in_fake.double().mean().item()


def density_coverage(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = DENSITY_COVERAGE_K,
    real_radii: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Density and coverage (Naeem et al., 2020); both use only balls around real points.

    Density: how many real balls contain each fake point, divided by k and averaged; about 1 when
    fake matches real, above 1 when samples crowd where real data is dense, unbounded.
    Coverage: the share of real points whose ball contains at least one fake point.
    """
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    real_radii2 = real_radii.float().square()
    balls_containing = torch.zeros(len(fake), dtype=torch.float64)
    nearest_fake2 = torch.full((len(real),), math.inf)
    for start in range(0, len(fake), CHUNK_ROWS):
        distances2 = squared_distances(fake[start : start + CHUNK_ROWS], real)  # (chunk, M)
        balls_containing[start : start + CHUNK_ROWS] = (distances2 <= real_radii2).sum(dim=1).double()
        nearest_fake2 = torch.minimum(nearest_fake2, distances2.min(dim=0).values)
    density = balls_containing.mean().item() / k
    coverage = (nearest_fake2 <= real_radii2).double().mean().item()
    return density, coverage


# ----------------------------------------------------------------------------------------------
# Class statistics from the evaluator's probabilities


def classifier_score(probabilities: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))), the Inception Score with the evaluator as the classifier.

    Between 1 (every sample gets the same class distribution) and 10 (each sample is one
    confident digit, and all ten digits are equally common).
    """
    p_y_given_x = probabilities.double()
    p_y = p_y_given_x.mean(dim=0, keepdim=True)
    # xlogy: a zero probability contributes 0, not 0 * log 0 = nan.
    kl = (torch.special.xlogy(p_y_given_x, p_y_given_x) - torch.special.xlogy(p_y_given_x, p_y)).sum(dim=1)
    return math.exp(kl.mean().item())


def class_histogram(probabilities: torch.Tensor) -> torch.Tensor:
    """Share of samples whose most probable class is each digit -> (10,) float64, sums to 1."""
    predicted = probabilities.argmax(dim=1)
    return torch.bincount(predicted, minlength=probabilities.shape[1]).double() / len(predicted)


def digits_covered(histogram: torch.Tensor, min_share: float = COVERED_SHARE) -> int:
    """Number of digits drawn at least ``min_share`` of the time (a fifth of the uniform 10%)."""
    return int((histogram >= min_share).sum().item())


def class_kl(fake_histogram: torch.Tensor, real_histogram: torch.Tensor) -> float:
    """KL(fake || real) in nats between class histograms; 0 when the digit mix matches.

    This direction stays finite when the generator never draws some digit (those terms are 0)
    and the real histogram, with every digit present, has no zeros: a single-digit generator
    scores about log(10) = 2.3.
    """
    fake_histogram, real_histogram = fake_histogram.double(), real_histogram.double()
    return (torch.special.xlogy(fake_histogram, fake_histogram) - torch.special.xlogy(fake_histogram, real_histogram)).sum().item()


def mean_confidence(probabilities: torch.Tensor) -> float:
    """Mean top-class probability: how sure the evaluator is, on average, about which digit it sees."""
    return probabilities.double().max(dim=1).values.mean().item()


def confident_fraction(probabilities: torch.Tensor, threshold: float = CONFIDENT_PROBABILITY) -> float:
    """Share of samples the evaluator assigns to one digit with probability at least ``threshold``."""
    return (probabilities.max(dim=1).values >= threshold).double().mean().item()
