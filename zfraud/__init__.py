"""zfraud: real-time card-fraud scoring on a broker-less ZeroMQ mesh with Cython kernels.

    >>> from zfraud import Client
    >>> with Client("tcp://127.0.0.1:5555") as client:
    ...     verdicts = client.score(columns)   # dict of numpy columns in, dict of verdict columns out
"""
__version__ = "0.2.0"

from .client import Client, Summary  # noqa: E402
from .model import load_model  # noqa: E402
from .worker import Worker  # noqa: E402

__all__ = ["Client", "Summary", "Worker", "load_model", "__version__"]
