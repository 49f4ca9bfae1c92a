"""How fast httpx_extensions.testing.AuthServer serves handshakes and authenticated requests.

Run: ``python bench/auth_server.py [--handshakes 500] [--requests 2000] [--threads 4]``.
The client is http.client + pyspnego (NTLM, 3 legs on a new connection each time), so the
figures include the client's own cost; they are the ceiling a test suite can expect.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import time
from concurrent.futures import ThreadPoolExecutor

import spnego

from httpx_extensions.testing import DEMO_USERS, AuthServer


def handshake(port: int) -> http.client.HTTPConnection:
    """Open a connection and authenticate it as alice with NTLM; raise unless it ends in 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    ctx = spnego.client("alice", DEMO_USERS["alice"], service="HTTP", protocol="ntlm")
    token = ctx.step() or b""
    while True:
        conn.request(
            "GET", "/", headers={"Authorization": "NTLM " + base64.b64encode(token).decode()}
        )
        response = conn.getresponse()
        response.read()
        if response.status == 200:
            return conn
        challenge = base64.b64decode(response.headers["WWW-Authenticate"].split()[1])
        token = ctx.step(challenge) or b""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=500)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    with AuthServer() as server:
        port = int(server.url.rsplit(":", 1)[1])
        for threads in (1, args.threads):
            started = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                for conn in pool.map(lambda _: handshake(port), range(args.handshakes)):
                    conn.close()
            elapsed = time.perf_counter() - started
            print(
                f"NTLM handshakes, {threads} client thread(s): {args.handshakes / elapsed:,.0f}/s"
            )
        conn = handshake(port)
        started = time.perf_counter()
        for _ in range(args.requests):
            conn.request("GET", "/")
            conn.getresponse().read()
        elapsed = time.perf_counter() - started
        print(f"requests on an authenticated connection: {args.requests / elapsed:,.0f}/s")
        conn.close()
        print(server)


if __name__ == "__main__":
    main()
