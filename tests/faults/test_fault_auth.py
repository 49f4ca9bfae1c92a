"""The fault server's NTLM/Negotiate path, driven by a pyspnego client over http.client."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any

import pytest
import spnego

from tests.faults import FaultServer

from ._support import exchange, request_bytes
from .conftest import Connect


def send(
    conn: http.client.HTTPConnection, path: str, scheme: str = "", token: bytes | None = None
) -> tuple[int, list[str], bytes]:
    """GET `path`, with `Authorization: <scheme> <token>` if a token is given."""
    headers = {"Authorization": f"{scheme} {base64.b64encode(token).decode()}"} if token else {}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.status, response.headers.get_all("WWW-Authenticate") or [], response.read()


def token_of(challenges: list[str], scheme: str) -> bytes:
    """The base64 token of the one `<scheme> <token>` challenge."""
    (value,) = challenges
    name, _, token = value.partition(" ")
    assert name == scheme
    return base64.b64decode(token)


def handshake(
    conn: http.client.HTTPConnection, user: str, password: str, scheme: str = "NTLM"
) -> dict[str, Any]:
    """Authenticate `conn` as `user` on /auth/ and return the final 200 JSON."""
    protocol = "ntlm" if scheme == "NTLM" else "negotiate"
    client = spnego.client(user, password, hostname="127.0.0.1", protocol=protocol)
    status, challenges, _ = send(conn, "/auth/x", scheme, client.step())
    assert status == 401
    status, challenges, body = send(
        conn, "/auth/x", scheme, client.step(token_of(challenges, scheme))
    )
    assert status == 200, (status, challenges, body)
    result: dict[str, Any] = json.loads(body)
    return result


def test_ntlm_identity_is_bound_to_the_connection(
    srv: FaultServer, connect: Connect, ntlm_users: dict[str, str]
) -> None:
    """After an NTLM handshake the connection is served as that user; a new one gets 401."""
    conn = connect(srv)
    assert send(conn, "/auth/x")[:2] == (401, ["Negotiate", "NTLM"])
    port = conn.sock.getsockname()[1]
    done = handshake(conn, "DOM\\alice", ntlm_users["DOM\\alice"])
    assert done == {"client_port": port, "request_index": 3, "user": "DOM\\alice"}
    status, _, body = send(conn, "/auth/y")
    assert status == 200 and json.loads(body)["user"] == "DOM\\alice"
    assert json.loads(send(conn, "/plain")[2])["user"] == "DOM\\alice"
    assert send(connect(srv), "/auth/y")[:2] == (401, ["Negotiate", "NTLM"])


def test_spnego_negotiate_and_a_new_handshake_replace_the_user(
    srv: FaultServer, connect: Connect, ntlm_users: dict[str, str]
) -> None:
    """SPNEGO-wrapped NTLM over `Negotiate` works, and a later handshake changes the user."""
    conn = connect(srv)
    assert handshake(conn, "bob", ntlm_users["bob"], scheme="Negotiate")["user"] == "bob"
    assert handshake(conn, "DOM\\alice", ntlm_users["DOM\\alice"])["user"] == "DOM\\alice"


def test_wrong_password_gets_the_offers_again(
    srv: FaultServer, connect: Connect, ntlm_users: dict[str, str]
) -> None:
    """A type 3 with a wrong password is answered 401 with both scheme offers."""
    conn = connect(srv)
    client = spnego.client("DOM\\alice", "wrong", hostname="127.0.0.1", protocol="ntlm")
    _, challenges, _ = send(conn, "/auth/x", "NTLM", client.step())
    status, challenges, _ = send(conn, "/auth/x", "NTLM", client.step(token_of(challenges, "NTLM")))
    assert (status, challenges) == (401, ["Negotiate", "NTLM"])


@pytest.mark.parametrize(
    ("kind", "says_close"), [("close_after_401", False), ("challenge_conn_close", True)]
)
def test_type2_challenge_then_close(
    srv: FaultServer, ntlm_users: dict[str, str], kind: str, says_close: bool
) -> None:
    """Given a type 1, both faults send a valid type 2 challenge and then FIN."""
    client = spnego.client("DOM\\alice", ntlm_users["DOM\\alice"], protocol="ntlm")
    type1 = client.step()
    assert type1
    authorization = "NTLM " + base64.b64encode(type1).decode()
    data, error = exchange(srv, request_bytes(f"/auth/fault/{kind}", Authorization=authorization))
    assert error is None and data.startswith(b"HTTP/1.1 401 ")
    (line,) = [h for h in data.split(b"\r\n") if h.startswith(b"WWW-Authenticate: ")]
    assert client.step(token_of([line.decode()[len("WWW-Authenticate: ") :]], "NTLM"))
    assert (b"\r\nConnection: close\r\n" in data) is says_close


def test_endless_401_sends_a_fresh_challenge_every_time(
    srv: FaultServer, connect: Connect, ntlm_users: dict[str, str]
) -> None:
    """`endless_401` answers each type 1 with a new type 2 and never accepts a type 3."""
    conn = connect(srv)
    challenges = []
    for _ in range(3):
        client = spnego.client("DOM\\alice", ntlm_users["DOM\\alice"], protocol="ntlm")
        status, offered, _ = send(conn, "/auth/fault/endless_401", "NTLM", client.step())
        assert status == 401
        challenges.append(token_of(offered, "NTLM"))
    assert len({c[24:32] for c in challenges}) == 3  # distinct 8-byte server challenges
    type3 = client.step(challenges[-1])
    status, offered, _ = send(conn, "/auth/fault/endless_401", "NTLM", type3)
    assert (status, offered) == (401, ["Negotiate", "NTLM"])
    assert srv.stats().connections == 1 and srv.stats().faults == {"endless_401": 4}
