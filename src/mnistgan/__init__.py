"""mnistgan: generative adversarial networks that draw handwritten digits.

    import mnistgan
    run = mnistgan.train("tf-dcgan-tutorial", epochs=5)
    run.grid(16)
"""

__version__ = "0.1.0"

from .api import Run, evaluate_real, evaluate_samples, load, resolve_config, train  # noqa: E402
from .errors import UserError  # noqa: E402

__all__ = ["Run", "UserError", "evaluate_real", "evaluate_samples", "load", "resolve_config", "train"]
