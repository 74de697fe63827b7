"""zfraud: real-time card-fraud scoring on a broker-less ZeroMQ mesh with Cython kernels.

    >>> from zfraud import Client
    >>> with Client("tcp://127.0.0.1:5555") as client:
    ...     verdicts = client.score(columns)   # dict of numpy columns in, dict of verdict columns out
"""
__version__ = "0.2.0"

__all__ = ["Client", "Summary", "Worker", "load_model", "__version__"]
_FROM = {"Client": "client", "Summary": "client", "Worker": "worker", "load_model": "model"}


def __getattr__(name):
    """The API, imported when first asked for: `import zfraud` (as the `zfraud` command does
    before anything else) then costs nothing, and a Ctrl-C in the command's first half second
    is its own (zfraud.__main__), not a traceback from here."""
    if name in _FROM:
        import importlib
        value = getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
