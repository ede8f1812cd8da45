"""One signed POST to a receiver, through the egress guard: its status, or why there was none
(shared by the confirmation of a subscription and the dispatcher's deliveries)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from edgefleet.domain.webhooks import REFUSED, UNREACHABLE
from edgefleet.services.egress import EgressRefusedError

MAX_RESPONSE_BYTES = 64 * 1024
"""A receiver's answer is read up to this much (to reuse the connection), then dropped."""


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str
    """What is recorded and shown: empty, or a generic reason."""
    duration_ms: float
    detail: str = ""
    """Why there was no status, for the server log only."""


async def post(
    client: httpx.AsyncClient, url: str, raw: bytes, sent: dict[str, str], seconds: float
) -> Outcome:
    """POST ``raw`` and report the status code or why there was none. ``seconds`` bounds the
    whole exchange (httpx's own timeout bounds each read and write)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    code: int | None = None
    error = detail = ""
    try:
        async with asyncio.timeout(seconds):
            async with client.stream("POST", url, content=raw, headers=sent) as response:
                code = response.status_code
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > MAX_RESPONSE_BYTES:
                        break
    except EgressRefusedError as exc:
        error, detail = REFUSED, exc.message
    except (TimeoutError, httpx.TimeoutException):
        error, detail = UNREACHABLE, f"no answer within {seconds:g} s"
    except httpx.HTTPError as exc:
        error, detail = UNREACHABLE, _describe(exc)
    elapsed = round((loop.time() - start) * 1000, 3)
    return Outcome(code, error, elapsed, detail[:500])


def _describe(exc: Exception) -> str:
    detail = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {detail}" if detail != exc.__class__.__name__ else detail
