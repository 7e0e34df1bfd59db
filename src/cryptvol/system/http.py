"""HTTP requests to the servers the node talks to (the Kubernetes API, a Kata shim).

A server that does not answer is Unavailable, so the orchestrator retries; the message says
which server and how it failed, never the request, whose headers may carry a token.
"""

from __future__ import annotations

from typing import Any

import httpx

from cryptvol.errors import Unavailable


def request(client: httpx.Client, method: str, url: str, where: str,
            **kwargs: Any) -> httpx.Response:
    try:
        return client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise Unavailable(f"{where} did not answer in time; retry") from None
    except httpx.HTTPError as exc:
        raise Unavailable(f"{where} cannot be reached ({type(exc).__name__}); retry") from None
