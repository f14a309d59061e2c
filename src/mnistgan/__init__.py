"""mnistgan: generative adversarial networks that draw handwritten digits.

    import mnistgan
    run = mnistgan.train("tf-dcgan-tutorial", epochs=5)
    run.grid(16)
    mnistgan.pretrained("NAME").grid(16)   # a generator that ships with mnistgan (`mnistgan pretrained`)
"""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402

__all__ = ["Run", "UserError", "evaluate_real", "evaluate_samples", "load", "pretrained", "resolve_config", "train"]


def __getattr__(name: str):
    # The API (and torch with it) loads on first use, so that the command line starts at once and a
    # Ctrl-C while torch loads reaches the command's own handler, not a traceback.
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'mnistgan' has no attribute {name!r}")
