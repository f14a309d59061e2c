"""Quality metrics for generated digits, all computed from one shipped evaluator network.

    from mnistgan.metrics import evaluate_images, evaluate_real
    scores = evaluate_images(images)   # images: float (N, 1, 28, 28) in [-1, 1], ideally N = 10,000
    floor = evaluate_real()            # the same numbers for 10,000 real training images

Every metric compares the samples with a real reference set, by default the 10,000 MNIST test
images. ``METRIC_KEYS`` says what each returned number means and which direction is better.
``evaluate_real()`` gives the best a generator can hope for: real training digits scored against
the test digits. FD, precision/recall and density/coverage depend on N (FD is biased upwards for
small N; KID is not), so compare numbers only at equal N (10,000 is the convention here).

Reading the numbers:
  * FD is the single summary; KID says the same with an error bar (kid_std) and no bias in N.
  * precision and density measure realism only: a generator drawing nothing but perfect 7s keeps
    them as high as real data. Lost variety shows in recall, coverage, digits_covered, class_kl.
  * mean_confidence and confident_fraction mean something only for digit-like images: like any
    classifier, the evaluator is confidently wrong on images unlike all digits (uniform noise
    gets mean confidence 1.0). Read them next to FD and precision, never alone.

The evaluator's features and probabilities for the reference images are computed once and kept in
the per-user cache (``reference/`` beside the MNIST cache), under a name that carries the weights'
SHA-256, so new weights never reuse old statistics.

``metrics.spread`` alone needs no evaluator: training's collapse check, the samples' pixel distances
against the training images'.
"""

from .scoring import (  # noqa: F401
    Activations,
    METRICS,
    METRIC_KEYS,
    MIN_IMAGES,
    MetricKey,
    RANGE_TOLERANCE,
    REFERENCES,
    REFERENCE_SIZE,
    Reference,
    activations_of,
    as_reference,
    check_images,
    conditional_accuracy,
    evaluate_images,
    evaluate_real,
    reference_activations,
    reference_dir,
    reference_path,
    score,
)
