"""kbench: a reproducible harness for vision-language pre-training in the fashion domain."""

__version__ = "0.1.0"

_API = ("evaluate", "ablate", "Results")


def __getattr__(name: str) -> object:
    """``kbench.evaluate``, ``kbench.ablate`` and ``kbench.Results``, imported on first use so that ``import kbench``
    stays light for the layers below the API."""
    if name in _API:
        from kbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'kbench' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
