import meshlens.auto  # noqa: F401  (the one line a service adds)

import urllib.error
import urllib.request
from typing import Annotated

import aiohttp
import httpx
import requests
import urllib3
from fastapi import FastAPI, Query

app = FastAPI()
TIMEOUT = 5


def _requests(url: str) -> int:
    return requests.get(url, timeout=TIMEOUT).status_code


def _httpx(url: str) -> int:
    with httpx.Client(timeout=TIMEOUT) as client:
        return client.get(url).status_code


def _urllib3(url: str) -> int:
    return urllib3.PoolManager(timeout=TIMEOUT, retries=False).request("GET", url).status


def _urllib(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def _httpx_async(url: str) -> int:
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        return (await client.get(url)).status_code


async def _aiohttp(url: str) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session, \
            session.get(url) as response:
        await response.read()
        return response.status


SYNC = {"requests": _requests, "httpx": _httpx, "urllib3": _urllib3, "urllib": _urllib}
ASYNC = {"httpx-async": _httpx_async, "aiohttp": _aiohttp}


@app.get("/health")
def health():
    return "ok"


@app.get("/sync/{client}")
def call_sync(client: str, url: Annotated[list[str] | None, Query()] = None):
    """GETs each url in turn with a blocking client; a failed connection is reported, not raised."""
    results = []
    for target in url or ():
        try:
            results.append(SYNC[client](target))
        except Exception as exc:
            results.append(type(exc).__name__)
    return results


@app.get("/async/{client}")
async def call_async(client: str, url: Annotated[list[str] | None, Query()] = None):
    results = []
    for target in url or ():
        try:
            results.append(await ASYNC[client](target))
        except Exception as exc:
            results.append(type(exc).__name__)
    return results
