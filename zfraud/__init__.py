"""zfraud: real-time card-fraud scoring on a broker-less ZeroMQ mesh with Cython kernels.

    >>> from zfraud import Client
    >>> with Client("tcp://127.0.0.1:5555") as client:
    ...     verdicts = client.score(columns)   # dict of numpy columns in, dict of verdict columns out
"""
__version__ = "0.2.0"

__all__ = ["Client", "Summary", "Worker", "load_model", "__version__"]
_FROM = {"Client": "client", "Summary": "client", "Worker": "worker", "load_model": "model"}


def __getattr__(name):
    """The API, and the modules (zfraud.client, ...), imported when first asked for: `import
    zfraud` (as the `zfraud` command does before anything else) then costs nothing, and a Ctrl-C
    in the command's first half second is its own (zfraud.__main__), not a traceback from here."""
    import importlib
    if name in _FROM:
        value = getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f".{name}", __name__)  # (it sets itself as our attribute)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise  # the module exists, and something it imports does not
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
