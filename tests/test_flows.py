"""Pinning, flow reservations and their release: the heart of connection-bound auth."""

from __future__ import annotations

import functools
import logging
import typing

import anyio
import httpx
import pytest

from httpx_extensions import ExClient
from tests._portserver import PortServer

pytestmark = pytest.mark.anyio


class ThreeLegAuth(httpx.Auth):
    """A test auth flow that sends three legs and records the client port of each."""

    def __init__(self, legs: int = 3) -> None:
        self.legs = legs
        self.ports: list[list[int]] = []

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> typing.AsyncGenerator[httpx.Request, httpx.Response]:
        ports = []
        for leg in range(self.legs):
            request.headers["Authorization"] = f"Test leg-{leg}"
            response = yield request
            await response.aread()
            ports.append(response.json()["port"])
        self.ports.append(ports)


async def _flows(client: httpx.AsyncClient, url: str, n: int) -> ThreeLegAuth:
    auth = ThreeLegAuth()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(functools.partial(client.get, url, auth=auth))
    return auth


def _mismatches(auth: ThreeLegAuth) -> int:
    return sum(1 for ports in auth.ports for p in ports[1:] if p != ports[0])


async def test_three_leg_flows_stay_on_one_connection(port_server: PortServer) -> None:
    """200 concurrent 3-leg flows on 10 connections: every leg on its flow's connection."""
    async with ExClient(limits=httpx.Limits(max_connections=10)) as client:
        auth = await _flows(client, port_server.url + "/leg", 200)
        assert client.pool_state().reserved == 0
        assert client.pool_state().active == 0
    assert len(auth.ports) == 200
    assert _mismatches(auth) == 0


async def test_stock_httpx_mixes_connections(port_server: PortServer) -> None:
    """Control: stock httpx sends later legs on other connections under the same load."""
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=10)) as client:
        auth = await _flows(client, port_server.url + "/leg", 200)
    assert len(auth.ports) == 200
    assert _mismatches(auth) > 0


async def test_pin_by_conn_id(port_server: PortServer) -> None:
    """request.extensions['conn_id'] sends on that connection even with others idle."""
    async with ExClient() as client:
        responses = await _gather(client, port_server.url + "/", 5)
        target = responses[2].extensions["conn_id"]
        port = responses[2].json()["port"]
        for _ in range(3):
            r = await client.get(port_server.url + "/", extensions={"conn_id": target})
            assert r.extensions["conn_id"] == target
            assert r.json()["port"] == port


async def test_pin_waits_for_busy_connection(port_server: PortServer) -> None:
    """A pinned request waits while its connection serves another request."""
    async with ExClient() as client:
        r = await client.get(port_server.url + "/")
        cid = r.extensions["conn_id"]
        results: list[httpx.Response] = []

        async def slow() -> None:
            results.append(
                await client.get(port_server.url + "/slow?s=0.3", extensions={"conn_id": cid})
            )

        async def pinned() -> None:
            await anyio.sleep(0.05)
            results.append(await client.get(port_server.url + "/", extensions={"conn_id": cid}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            tg.start_soon(pinned)
        assert [x.extensions["conn_id"] for x in results] == [cid, cid]
        assert results[1].json()["index"] == 3


async def test_gone_connection_warns(
    port_server: PortServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A pin to a closed connection logs one WARNING naming it and sends elsewhere."""
    async with ExClient() as client:
        r = await client.get(port_server.url + "/close")
        cid = r.extensions["conn_id"]
        with caplog.at_level(logging.WARNING, logger="httpx_extensions"):
            r2 = await client.get(port_server.url + "/", extensions={"conn_id": cid})
            r3 = await client.get(port_server.url + "/", extensions={"conn_id": "conn-unknown"})
    assert r2.status_code == r3.status_code == 200
    assert r2.extensions["conn_id"] != cid
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert cid in warnings[0].getMessage() and "closed" in warnings[0].getMessage()
    assert "conn-unknown" in warnings[1].getMessage()


async def test_pinned_connection_that_closes_while_waited_for_warns(
    port_server: PortServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A request pinned to a busy connection that then closes (its current response says
    Connection: close) logs one WARNING naming it and is sent on another connection."""
    async with ExClient() as client:
        cid = (await client.get(port_server.url + "/")).extensions["conn_id"]
        results: dict[str, httpx.Response] = {}

        async def closing() -> None:
            url = port_server.url + "/slow?s=0.3&close=1"
            results["closing"] = await client.get(url, extensions={"conn_id": cid})

        async def pinned() -> None:
            await anyio.sleep(0.05)  # the connection is busy now: this one waits for it
            results["pinned"] = await client.get(port_server.url + "/", extensions={"conn_id": cid})

        with caplog.at_level(logging.WARNING, logger="httpx_extensions"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(closing)
                tg.start_soon(pinned)
    assert results["closing"].extensions["conn_id"] == cid
    assert results["pinned"].status_code == 200
    assert results["pinned"].extensions["conn_id"] != cid
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and cid in warnings[0] and "waited" in warnings[0]


async def test_stream_keeps_reservation_until_closed(port_server: PortServer) -> None:
    """A streamed flow's connection stays busy until the response is closed."""
    async with ExClient() as client:
        async with client.stream("GET", port_server.url + "/big?n=200000") as r:
            assert client.pool_state().active == 1
            await anyio.sleep(0.05)
            assert client.pool_state().active == 1
        state = client.pool_state()
        assert (state.active, state.reserved) == (0, 0)
        async with client.stream("GET", port_server.url + "/") as r:
            assert client.pool_state().active == 1
            await r.aread()
        state = client.pool_state()
        assert (state.active, state.reserved, state.idle) == (0, 0, 1)


async def test_cancel_mid_flow_releases(port_server: PortServer) -> None:
    """Cancelling a flow mid-handshake returns the pool to 0 active and 0 reserved."""

    class SlowSecondLeg(httpx.Auth):
        async def async_auth_flow(
            self, request: httpx.Request
        ) -> typing.AsyncGenerator[httpx.Request, httpx.Response]:
            yield request
            request.url = request.url.copy_with(path="/slow", query=b"s=2")
            yield request

    async with ExClient() as client:
        with anyio.move_on_after(0.3):
            await client.get(port_server.url + "/", auth=SlowSecondLeg())
        state = client.pool_state()
        assert (state.active, state.reserved) == (0, 0)
        r = await client.get(port_server.url + "/")
        assert r.status_code == 200


async def test_exception_in_auth_flow_releases(port_server: PortServer) -> None:
    """An auth flow that raises after one leg leaves nothing reserved."""

    class Boom(httpx.Auth):
        async def async_auth_flow(
            self, request: httpx.Request
        ) -> typing.AsyncGenerator[httpx.Request, httpx.Response]:
            yield request
            raise RuntimeError("boom")

    async with ExClient() as client:
        with pytest.raises(RuntimeError):
            await client.get(port_server.url + "/", auth=Boom())
        state = client.pool_state()
        assert (state.active, state.reserved) == (0, 0)


async def test_pool_timeout(port_server: PortServer) -> None:
    """With the only connection busy, a second request hits httpx.PoolTimeout."""
    timeout = httpx.Timeout(5.0, pool=0.1)
    async with ExClient(limits=httpx.Limits(max_connections=1), timeout=timeout) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, port_server.url + "/slow?s=0.5")
            await anyio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await client.get(port_server.url + "/")
        state = client.pool_state()
        assert (state.active, state.queued, state.reserved) == (0, 0, 0)


async def test_redirect_across_origins_with_one_connection(
    port_server: PortServer, port_server2: PortServer
) -> None:
    """max_connections=1: an auth flow that redirects to another origin still completes."""
    auth = ThreeLegAuth(legs=2)
    async with ExClient(limits=httpx.Limits(max_connections=1), follow_redirects=True) as client:
        url = port_server.url + "/redirect?to=" + port_server2.url + "/leg"
        with anyio.fail_after(5):
            r = await client.get(url, auth=auth)
        assert r.status_code == 200
        assert r.json()["path"] == "/leg"
        state = client.pool_state()
        assert (state.active, state.reserved) == (0, 0)


async def test_explicit_reserve_and_release(port_server: PortServer) -> None:
    """extensions['reserve'] holds a connection across sends until release()."""
    async with ExClient() as client:
        r = await client.get(port_server.url + "/", extensions={"reserve": True})
        cid = r.extensions["conn_id"]
        assert client.pool_state().reserved == 1
        other = await client.get(port_server.url + "/")
        assert other.extensions["conn_id"] != cid
        again = await client.get(port_server.url + "/", extensions={"conn_id": cid})
        assert again.extensions["conn_id"] == cid
        assert await client.release(cid)
        assert client.pool_state().reserved == 0
        assert not await client.release("conn-nope")


async def test_identity_tags(port_server: PortServer) -> None:
    """A tagged connection serves only its identity; anonymous requests never ride it."""
    async with ExClient() as client:
        a = await client.get(port_server.url + "/", extensions={"identity": "alice"})
        anon = await client.get(port_server.url + "/")
        assert anon.extensions["conn_id"] != a.extensions["conn_id"]
        b = await client.get(port_server.url + "/", extensions={"identity": "bob"})
        assert b.extensions["conn_id"] not in (a.extensions["conn_id"],)
        a2 = await client.get(port_server.url + "/", extensions={"identity": "alice"})
        assert a2.extensions["conn_id"] == a.extensions["conn_id"]
        assert a2.extensions["conn_tagged"] is True
        assert a.extensions["conn_tagged"] is False


async def test_new_connection_extension(port_server: PortServer) -> None:
    """extensions['new_connection'] opens a connection that served nothing before."""
    async with ExClient() as client:
        r1 = await client.get(port_server.url + "/")
        r2 = await client.get(port_server.url + "/", extensions={"new_connection": True})
        assert r2.extensions["conn_id"] != r1.extensions["conn_id"]
        assert r2.extensions["conn_requests"] == 1


async def test_queued_request_never_loses_its_connection(port_server: PortServer) -> None:
    """httpcore issue 1110: a connection handed to a queued request is never closed."""
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=1, keepalive_expiry=0.05)
    async with ExClient(limits=limits, timeout=httpx.Timeout(2.0)) as client:
        with anyio.fail_after(10):
            responses = await _gather(client, port_server.url + "/", 60)
        assert all(r.status_code == 200 for r in responses)


async def _gather(client: httpx.AsyncClient, url: str, n: int) -> list[httpx.Response]:
    results: list[httpx.Response] = []

    async def one() -> None:
        results.append(await client.get(url))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return results
