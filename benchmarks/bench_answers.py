"""How an answer is written: one ``GET /api/v1/devices`` page of 100 devices, in process.

The same FastAPI app serves the page four ways, alternating rounds so each sees the same
machine: the route returning the dict (FastAPI encodes ``dict[str, Any]`` itself, what every
route did before the response models), ``reply()`` (what the routes do now: pydantic-core's
serializer, no validation), a ``JSONResponse`` (the standard library's json) and the page
validated by its model (what ``response_model`` would cost if the route returned the dict).
Prints the CPU per request of each and per serialization alone. Run:
``.venv/bin/python -m benchmarks.bench_answers``.
"""

from __future__ import annotations

import asyncio
import json
import time
import timeit
from typing import Any

import httpx
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from edgefleet.api.responses import reply
from edgefleet.api.responses.devices import DeviceList

T = "2026-12-07T03:00:00.000000"
DEVICE: dict[str, Any] = {
    "uuid": "4b0f6a1c-3f52-4f0e-9a57-0a1b2c3d4e5f",
    "displayName": "gw 1",
    "description": "",
    "mac": "0090E8000001",
    "serialNumber": "SN1",
    "iccId": "",
    "createdAt": T,
    "updatedAt": T,
    "connection": {"deviceUUID": "x", "status": "online", "createdAt": T},
    "properties": {
        "deviceUUID": "x",
        "createdAt": T,
        "modelName": "UC-8112-LX",
        "softwareVersion": "1.0",
        "gps": {"lat": 25.03, "lng": 121.56},
        "customProperties": {"line": 3},
    },
    "groupId": 3,
    "tags": ["line-3", "pump"],
    "attributes": {"site": "north"},
}
PAGE = {"count": 100, "limit": 100, "offset": 0, "data": [dict(DEVICE) for _ in range(100)]}
REQUESTS = 300
ROUNDS = 3


def app() -> FastAPI:
    a = FastAPI()

    @a.get("/dict")
    async def as_dict() -> dict[str, Any]:
        return PAGE

    @a.get("/reply", response_model=DeviceList)
    async def as_reply() -> Response:
        return reply(PAGE)

    @a.get("/stdlib", response_model=DeviceList)
    async def as_json_response() -> Response:
        return JSONResponse(PAGE)

    @a.get("/validated", response_model=DeviceList)
    async def validated() -> dict[str, Any]:
        return PAGE

    return a


async def main() -> None:
    ways = ("/dict", "/reply", "/stdlib", "/validated")
    transport = httpx.ASGITransport(app=app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        bodies = {(await client.get(w)).content for w in ways[:3]}
        # the validated page differs: the model's defaults (null) fill the unsent properties
        print(f"dict, reply and JSONResponse answer the same bytes: {len(bodies) == 1}")
        cpu: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(ROUNDS):
            for w in ways:
                start = time.process_time()
                for _ in range(REQUESTS):
                    await client.get(w)
                cpu[w].append((time.process_time() - start) / REQUESTS * 1000)
    base = min(cpu["/dict"])
    for w in ways:
        best = min(cpu[w])
        print(f"GET {w:<10} {best:.3f} ms CPU per request (best of {ROUNDS}), {best / base:.2f}x")
    any_dict = TypeAdapter(dict[str, Any])
    model = TypeAdapter(DeviceList)
    alone = {
        "reply (pydantic-core)": lambda: reply(PAGE),
        "FastAPI on dict[str, Any]": lambda: any_dict.dump_json(any_dict.validate_python(PAGE)),
        "json.dumps (JSONResponse)": lambda: json.dumps(
            PAGE, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ),
        "validated by DeviceList": lambda: model.dump_json(model.validate_python(PAGE)),
    }
    for name, f in alone.items():
        each = min(timeit.repeat(f, number=1000, repeat=3)) / 1000 * 1000
        print(f"serialization alone, {name}: {each:.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
