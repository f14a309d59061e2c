"""The metric math against values worked out independently, and the public evaluate functions."""

import math

import pytest
import torch

import mnistgan.metrics as metrics
from mnistgan.data import load_mnist, to_unit_range
from mnistgan.errors import UserError
from mnistgan.metrics import distances


def line(*values):
    """Points on a line as an (N, 1) feature matrix."""
    return torch.tensor(values, dtype=torch.float64)[:, None]


# ----------------------------------------------------------------------------------------------
# Fréchet distance


def test_fd_of_diagonal_gaussians_matches_closed_form():
    # For diagonal covariances FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mean1, mean2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.25])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0.5) ** 2
    assert distances.frechet_distance(mean1, torch.diag(a), mean2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fd_of_non_commuting_covariances_matches_2x2_formula():
    # For 2x2 S1 S2 with positive eigenvalues, tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    cov1 = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    cov2 = torch.tensor([[1.0, -0.7], [-0.7, 3.0]], dtype=torch.float64)
    trace_root = math.sqrt((cov1 @ cov2).trace().item() + 2 * math.sqrt(cov1.det().item() * cov2.det().item()))
    expected = 0.5**2 + cov1.trace().item() + cov2.trace().item() - 2 * trace_root
    mean1, mean2 = torch.zeros(2), torch.tensor([0.5, 0.0])
    assert distances.frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-10)


def test_fd_of_identical_sets_is_zero_and_a_shift_adds_its_squared_length():
    features = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0)).exp()  # skewed, not Gaussian
    assert distances.frechet_distance_of_features(features, features) == pytest.approx(0.0, abs=1e-9)
    shift = torch.zeros(16)
    shift[3], shift[7] = 3.0, 4.0
    assert distances.frechet_distance_of_features(features, features + shift) == pytest.approx(25.0, rel=1e-9)


def test_fd_handles_singular_covariances():
    # Dead feature units (always 0) make the covariance singular; FD must stay finite and exact.
    features = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    features[:, :3] = 0
    assert distances.frechet_distance_of_features(features, features) == pytest.approx(0.0, abs=1e-9)
    assert math.isfinite(distances.frechet_distance_of_features(features, features * 2))


def test_sqrtm_psd_squares_back():
    x = torch.randn(50, 20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    matrix = x.T @ x
    root = distances.sqrtm_psd(matrix)
    torch.testing.assert_close(root @ root, matrix, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# KID


def test_mmd2_unbiased_matches_the_definition_written_as_loops():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(6, 4, generator=generator, dtype=torch.float64) + 0.5
    k = lambda a, b: (a @ b / 4 + 1) ** 3  # noqa: E731
    m = len(x)
    within = lambda s: sum(k(s[i], s[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))  # noqa: E731
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    expected = (within(x) + within(y) - 2 * across).item()
    assert distances.mmd2_unbiased(x, y).item() == pytest.approx(expected, rel=1e-12)
    assert distances.mmd2_unbiased(x.float(), y.float()).item() == pytest.approx(expected, rel=1e-5)  # float32 kernels
    batched = distances.mmd2_unbiased(torch.stack([x, y]), torch.stack([y, x]))  # two estimates at once
    assert batched.tolist() == pytest.approx([expected, expected], rel=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    generator = torch.Generator().manual_seed(4)
    real, same, shifted = (torch.randn(1500, 32, generator=generator) for _ in range(3))
    shifted += 0.5
    kid_same, std_same = distances.kernel_inception_distance(real, same, subsets=50, subset_size=500)
    kid_shifted, std_shifted = distances.kernel_inception_distance(real, shifted, subsets=50, subset_size=500)
    assert abs(kid_same) < 3 * std_same + 1e-3
    assert kid_shifted > 10 * (abs(kid_same) + std_same)
    # seeded: the same features give the same number
    assert distances.kernel_inception_distance(real, shifted, subsets=50, subset_size=500) == (kid_shifted, std_shifted)


# ----------------------------------------------------------------------------------------------
# Precision / recall, density / coverage


def test_knn_radii_by_hand_and_in_chunks():
    # On 0, 1, ..., 9: the 3rd nearest other point of 0 is 3; of an inner point, 2.
    radii = distances.knn_radii(line(*range(10)), 3)
    assert radii.tolist() == [3, 2, 2, 2, 2, 2, 2, 2, 2, 3]
    features = torch.randn(2500, 5, generator=torch.Generator().manual_seed(5))  # more rows than one chunk
    brute = torch.cdist(features.double(), features.double()).sort(dim=1).values[:, 3]
    torch.testing.assert_close(distances.knn_radii(features, 3).double(), brute, rtol=1e-5, atol=1e-5)


def test_precision_recall_by_hand():
    real = line(*range(10))
    # Fake 0..4: all inside the real manifold (precision 1). Fake balls (k=3): radii 3,2,2,2,3
    # cover [-3, 7], so real points 0..7 are inside: recall 0.8.
    assert distances.precision_recall(real, line(0, 1, 2, 3, 4), k=3) == pytest.approx((1.0, 0.8))
    # Half the samples far away: precision 0.5; those far points add no recall.
    assert distances.precision_recall(real, line(0.5, 4.5, 100, 101), k=3)[0] == pytest.approx(0.5)
    assert distances.precision_recall(real, line(100, 101, 102, 103), k=3) == (0.0, 0.0)
    assert distances.precision_recall(real, real, k=3) == (1.0, 1.0)


def test_density_coverage_by_hand():
    real = line(*range(10))  # k=5 radii: 5, 4, 3, 3, 3, 3, 3, 3, 4, 5
    # 4.5 lies in all 10 balls: density 10 / 5 = 2 (crowding), coverage 1.
    assert distances.density_coverage(real, line(4.5), k=5) == pytest.approx((2.0, 1.0))
    # 0.2 lies in the balls of 0, 1, 2, 3 (4 balls), 100 in none: density 4 / 2 / 5; coverage 4 / 10.
    assert distances.density_coverage(real, line(0.2, 100), k=5) == pytest.approx((0.4, 0.4))
    assert distances.density_coverage(real, line(100, 200), k=5) == (0.0, 0.0)


def test_precision_recall_and_density_coverage_agree_with_brute_force_across_chunks():
    generator = torch.Generator().manual_seed(6)
    real, fake = torch.randn(1700, 6, generator=generator), torch.randn(2300, 6, generator=generator) * 1.3 + 0.3
    d_real = torch.cdist(real.double(), real.double()).sort(dim=1).values
    d_fake = torch.cdist(fake.double(), fake.double()).sort(dim=1).values
    across = torch.cdist(fake.double(), real.double())  # (fake, real)
    r3_real, r3_fake, r5_real = d_real[:, 3], d_fake[:, 3], d_real[:, 5]
    precision = (across <= r3_real).any(dim=1).double().mean().item()
    recall = (across.T <= r3_fake).any(dim=1).double().mean().item()
    density = (across <= r5_real).sum(dim=1).double().mean().item() / 5
    coverage = (across.min(dim=0).values <= r5_real).double().mean().item()
    assert distances.precision_recall(real, fake, k=3) == pytest.approx((precision, recall), abs=1e-12)
    assert distances.density_coverage(real, fake, k=5) == pytest.approx((density, coverage), abs=1e-12)
    assert 0.3 < precision < 0.99 and 0.3 < recall < 0.99  # a case where the answer is not trivially 0 or 1


# ----------------------------------------------------------------------------------------------
# Class statistics


def one_hot(classes):
    return torch.eye(10)[torch.tensor(classes)]


def test_classifier_score_extremes():
    assert distances.classifier_score(one_hot(list(range(10)) * 5)) == pytest.approx(10.0)
    assert distances.classifier_score(one_hot([0, 1] * 5)) == pytest.approx(2.0)
    assert distances.classifier_score(one_hot([7] * 50)) == pytest.approx(1.0)
    unsure = torch.softmax(torch.randn(1, 10, generator=torch.Generator().manual_seed(7)), dim=1).repeat(50, 1)
    assert distances.classifier_score(unsure) == pytest.approx(1.0)


def test_class_statistics():
    uniform = distances.class_histogram(one_hot(list(range(10)) * 10))
    assert uniform.tolist() == pytest.approx([0.1] * 10)
    single = distances.class_histogram(one_hot([3] * 100))
    assert distances.digits_covered(single) == 1 and distances.digits_covered(uniform) == 10
    assert distances.class_kl(single, uniform) == pytest.approx(math.log(10))
    assert distances.class_kl(uniform, uniform) == pytest.approx(0.0)
    # one digit drawn 1 time in 100 is below the 2% threshold: not covered
    rare = distances.class_histogram(one_hot([0] * 10 + [1] * 89 + [2]))
    assert distances.digits_covered(rare) == 2
    probabilities = torch.tensor([[0.95, 0.05] + [0.0] * 8, [0.6, 0.4] + [0.0] * 8])
    assert distances.mean_confidence(probabilities) == pytest.approx(0.775)
    assert distances.confident_fraction(probabilities) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------
# The public functions


@pytest.fixture
def small_reference(monkeypatch, tmp_path):
    """Reference sets of 1,000 images, cached under a temporary directory."""
    monkeypatch.setenv("MNISTGAN_CACHE_DIR", str(tmp_path / "mnist"))
    monkeypatch.setattr(metrics.scoring, "REFERENCE_SIZE", 1000)
    monkeypatch.setattr(metrics.scoring, "_in_memory", {})
    return tmp_path / "reference"


def test_evaluate_images_returns_every_key_and_caches_the_reference(small_reference):
    images = to_unit_range(load_mnist("train").images[:300])
    first = metrics.evaluate_images(images)
    assert set(first) == set(metrics.METRIC_KEYS) - {"conditional_accuracy", "fd_train", "modes_covered", "reverse_kl",
                                                     "channel_confidence"}
    assert first["n"] == 300 and len(first["class_histogram"]) == 10
    cached = list(small_reference.glob("test-first1000-evaluator-*.safetensors"))
    assert len(cached) == 1 and metrics.evaluator.WEIGHTS_SHA256[:16] in cached[0].name
    # a new process reads the file instead of recomputing, and gets the same numbers
    metrics.scoring._in_memory.clear()
    assert metrics.evaluate_images(images) == first
    # a damaged cache file is rebuilt, not trusted
    metrics.scoring._in_memory.clear()
    cached[0].write_bytes(b"not a safetensors file")
    assert metrics.evaluate_images(images) == first
    assert len(cached[0].read_bytes()) > 100_000


def test_evaluate_images_subset_of_metrics_and_train_reference(small_reference):
    images = to_unit_range(load_mnist("test").images[:200])
    result = metrics.evaluate_images(images, reference="train", metrics=["fd", "classes"])
    assert set(result) == {"fd", "digits_covered", "class_kl", "class_histogram", "mean_confidence", "confident_fraction", "n"}
    # what a run chooses by: the same samples' FD against the training reference, beside the test one's
    both = metrics.evaluate_images(images, metrics=["fd"], train_fd=True)
    assert both["fd_train"] == result["fd"] and both["fd"] != result["fd"]


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(20, 28, 28), "shape"),
        (torch.zeros(20, 1, 28, 28, dtype=torch.uint8), "float"),
        (torch.zeros(5, 1, 28, 28), "at least"),
        (torch.full((20, 1, 28, 28), float("nan")), "NaN"),
        (torch.full((20, 1, 28, 28), 2.0), "\\[-1, 1\\]"),
    ],
)
def test_evaluate_images_rejects_bad_images(images, message):
    with pytest.raises(UserError, match=message):
        metrics.evaluate_images(images)


def test_evaluate_images_rejects_unknown_names():
    images = torch.zeros(20, 1, 28, 28)
    with pytest.raises(UserError, match="reference"):
        metrics.evaluate_images(images, reference="validation")
    with pytest.raises(UserError, match="unknown metric"):
        metrics.evaluate_images(images, metrics=["fid"])


def test_conditional_accuracy():
    test = load_mnist("test")
    images, labels = to_unit_range(test.images[:500]), test.labels[:500]
    assert metrics.conditional_accuracy(images, labels) > 0.98
    assert metrics.conditional_accuracy(images, (labels + 1) % 10) < 0.02
    with pytest.raises(UserError, match="classes 0..9"):
        metrics.conditional_accuracy(images, labels + 10)
    with pytest.raises(UserError, match="shape"):
        metrics.conditional_accuracy(images, labels[:10])
    scored = metrics.evaluate_images(images, metrics=["fd"], labels=labels)  # one evaluator pass for both
    assert scored["conditional_accuracy"] == metrics.conditional_accuracy(images, labels)
    with pytest.raises(UserError, match="shape"):
        metrics.evaluate_images(images, metrics=["fd"], labels=labels[:10])


def test_an_unwritable_cache_only_costs_a_warning(small_reference):
    small_reference.write_text("a file where the cache folder should be")
    images = to_unit_range(load_mnist("train").images[:100])
    with pytest.warns(UserWarning, match="could not cache reference statistics"):
        result = metrics.evaluate_images(images, metrics=["fd"])
    assert result["fd"] > 0
