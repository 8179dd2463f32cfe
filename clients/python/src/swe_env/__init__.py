"""Typed Python client of the swe-env gRPC service.

    from swe_env import Client
    client = Client("127.0.0.1:50051", token)          # or "unix:/run/swe-env.sock"
    fleet = Client(["10.0.0.1:50051", "10.0.0.2:50051"], token)   # or ["swe-env.ns.svc:50051"] (all its addresses)
    with client.episode(task_id, max_turns=50) as ep:
        obs = ep.step("<tool: bash>\\nls\\n</tool>")
        print(obs.observation.text)

:class:`AsyncClient` is the asyncio variant; :mod:`swe_env.render` renders conversations (CWM layout, OpenAI
messages); :mod:`swe_env.errors` holds the exceptions; ``swe_env.v1.env_pb2`` the generated messages.
"""

from . import errors, render
from ._build_info import PROTO_SHA256, VERSION
from ._core import RetryPolicy, new_request_id
from ._fleet import NodeView
from .aio import AsyncClient, AsyncEpisode
from .client import Client, Episode
from .errors import SweEnvError
from .v1 import env_pb2

__version__ = VERSION

__all__ = [
    "AsyncClient",
    "AsyncEpisode",
    "Client",
    "Episode",
    "NodeView",
    "PROTO_SHA256",
    "RetryPolicy",
    "SweEnvError",
    "env_pb2",
    "errors",
    "new_request_id",
    "render",
    "__version__",
]
