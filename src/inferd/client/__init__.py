"""The Python SDK for inferd's HTTP API: management routes under /api/v1 and V2 inference.

    from inferd.client import Client

    with Client("http://127.0.0.1:8000", api_key="inferd_...") as c:
        c.create_model("iris")
        c.upload("iris", "model.skops", on_progress=lambda sent, total: ...)
        c.deploy("iris")
        c.infer("iris", {"input": np.zeros((1, 4), np.float32)})["predict"]

It depends on httpx only (numpy is imported lazily, for `infer`), never on the server.
"""

from inferd.client.client import DEFAULT_URL, Client
from inferd.client.credentials import (
    Credentials,
    credentials_path,
    load_credentials,
    remove_credentials,
    save_credentials,
)
from inferd.client.errors import InferdClientError

__all__ = [
    "DEFAULT_URL",
    "Client",
    "Credentials",
    "InferdClientError",
    "credentials_path",
    "load_credentials",
    "remove_credentials",
    "save_credentials",
]
