"""TlsNtlmServer: an HTTPS loopback server whose NTLM acceptor demands channel bindings.

Theory of operation: a ``ThreadingHTTPServer`` on 127.0.0.1 wraps every accepted socket in
TLS (certificate from a ``trustme`` CA); one handler object serves one TCP connection, so
the NTLM logon belongs to the connection (IIS semantics). The acceptor is pyspnego's
(``spnego.server(protocol="ntlm")`` with ``NTLM_USER_FILE``), given RFC 5929
``tls-server-end-point`` bindings of ``expected_cert`` (by default its own certificate).

pyspnego's acceptor rejects an AUTHENTICATE message without ``MsvAvChannelBindings`` and one
whose bindings differ, but accepts an all-zero hash (the "unknown bindings" of clients
that cannot compute them). We want "Extended Protection: Required", so the handler also
reads the AV pair itself (pyspnego's ``_ntlm_raw`` message classes) and refuses zeros.
Every outcome is recorded in ``results`` for the tests.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import ssl
import threading
from types import TracebackType
from typing import Any

import spnego
import spnego.channel_bindings
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from spnego._ntlm_raw.messages import Authenticate, AvId, NTClientChallengeV2

__all__ = ["TlsNtlmServer", "av_channel_bindings", "tls_server_end_point"]

_ZERO = b"\x00" * 16


def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 application data: the certificate hashed with its signature hash (or SHA-256)."""
    algorithm = x509.load_der_x509_certificate(cert_der).signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return b"tls-server-end-point:" + digest.finalize()


def av_channel_bindings(authenticate: bytes) -> bytes | None:
    """The ``MsvAvChannelBindings`` hash of an NTLMv2 AUTHENTICATE message, or None if absent."""
    message = Authenticate.unpack(authenticate)
    response = message.nt_challenge_response
    if not response or len(response) <= 24:
        return None  # NTLMv1: no AV pairs at all
    pairs = NTClientChallengeV2.unpack(response[16:]).av_pairs
    value = pairs.get(AvId.channel_bindings)
    return bytes(value) if value is not None else None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 5.0  # an idle keep-alive connection ends after this long
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.user: str | None = None
        self.acceptor: Any = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        token = self._token()
        if token is None:
            if self.user is not None:
                return self._send(200, self.user.encode())
            return self._send(401)
        if self.acceptor is None:
            self.user = None
            self.acceptor = spnego.server(protocol="ntlm", channel_bindings=self.server.bindings)
        try:
            out = self.acceptor.step(token)
            if self.acceptor.complete:
                self._check_bindings(token)
        except Exception as exc:  # pyspnego raises BadBindingsError, InvalidTokenError, ...
            self.acceptor = None
            self.server.record(f"rejected: {type(exc).__name__}: {exc}")
            return self._send(401)
        if not self.acceptor.complete:
            return self._send(401, token=out)
        self.user = str(self.acceptor.client_principal)
        self.acceptor = None
        self.server.record(f"accepted: {self.user}")
        self._send(200, self.user.encode())

    def _check_bindings(self, authenticate: bytes) -> None:
        value = av_channel_bindings(authenticate)
        if value is None or value == _ZERO:
            raise PermissionError(f"channel bindings required, got {value!r}")

    def _token(self) -> bytes | None:
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "ntlm" or not value.strip():
            return None
        try:
            return base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None

    def _send(self, status: int, body: bytes = b"", token: bytes | None = None) -> None:
        self.send_response(status)
        challenge = "NTLM" if token is None else f"NTLM {base64.b64encode(token).decode()}"
        if status == 401:
            self.send_header("WWW-Authenticate", challenge)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, context: ssl.SSLContext, bindings: Any) -> None:
        self.context = context
        self.bindings = bindings
        self.results: list[str] = []
        self._results_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        return self.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        ), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (OSError, ssl.SSLError):
            return  # a client that gave up on TLS
        super().finish_request(request, client_address)

    def record(self, result: str) -> None:
        with self._results_lock:
            self.results.append(result)


class TlsNtlmServer:
    """HTTPS + connection-bound NTLM on 127.0.0.1 that requires matching channel bindings.

    Args:
        ca: a ``trustme.CA``; the server's certificate is issued for ``127.0.0.1``.
        expected_cert: DER certificate whose bindings the acceptor expects; by default its
            own, as a server reached directly. Another certificate plays a server behind a
            TLS-terminating proxy: then every binding a client computes is wrong.

    Attributes:
        url: ``https://127.0.0.1:<port>``.
        cert_der: the server's own certificate (DER).
        results: ``"accepted: <user>"`` or ``"rejected: <why>"`` per completed handshake.
    """

    def __init__(self, ca: Any, expected_cert: bytes | None = None) -> None:
        leaf = ca.issue_cert("127.0.0.1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(context)
        self.cert_der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
        bindings = spnego.channel_bindings.GssChannelBindings(
            application_data=tls_server_end_point(expected_cert or self.cert_der)
        )
        self._server = _Server(context, bindings)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def results(self) -> list[str]:
        """What each completed handshake came to, in order."""
        return list(self._server.results)

    def __enter__(self) -> TlsNtlmServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
