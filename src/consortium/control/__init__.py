"""The control plane: the REST API of a deployed server, its tokens, and the Python SDK.

``consortium.ControlClient`` (:mod:`consortium.control.sdk`) needs only the
standard library; the server side (:mod:`consortium.control.api`, ``serve``)
needs FastAPI and uvicorn (``pip install 'consortium[control]'``) and is
imported only by ``consortium server --http``.
"""

from consortium.control.sdk import ApiRequestError, ControlClient

__all__ = ["ApiRequestError", "ControlClient"]
