"""The one place that builds sync URLs, the way the real 0.4.0 client does (spec §2.1):
``?storeId=…&payload=…&transport=ws|http``, the payload JSON percent-encoded twice (once by
the client, once by the query encoding).

Tests that must send something the client never would (a malformed payload, a missing
``transport``) write their query strings by hand, on purpose.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote, urlencode

import orjson

Transport = Literal["ws", "http"]


def sync_query(store_id: str, *, payload: object = None, transport: Transport = "ws") -> str:
    """The query string (without ``?``)."""
    params = [("storeId", store_id)]
    if payload is not None:
        params.append(("payload", quote(orjson.dumps(payload).decode(), safe="")))
    params.append(("transport", transport))
    return urlencode(params)


def sync_url(
    address: str,
    store_id: str,
    *,
    payload: object = None,
    transport: Transport = "ws",
    path: str = "/",
) -> str:
    """The full URL for ``address`` (``host:port``): ``ws://`` for the WebSocket transport,
    ``http://`` for the HTTP one."""
    query = sync_query(store_id, payload=payload, transport=transport)
    return f"{transport}://{address}{path}?{query}"
