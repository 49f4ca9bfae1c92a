"""A squid NTLM authenticator that really checks passwords, on pyspnego's NTLM acceptor.

Run by squid as ``python3 _squid_ntlm_helper.py USER_FILE [SYS_PATH...]`` under the
``proxy`` user, one process per handshake in progress (squid reserves a stateful NTLM
helper from the type-1 message to the type-3 message). Protocol on stdin/stdout, one
line each way:

1. ``YR <type-1>``: start a new handshake; answer ``TT <type-2>``.
2. ``KK <type-3>``: finish it; answer ``AF <user>`` when the password matched,
   ``NA <reason>`` when it did not.
3. Anything else: ``BH <reason>`` (broken helper: squid rejects the request).

``USER_FILE`` holds gss-ntlmssp style lines ``DOMAIN:user:password``; the pure-Python
acceptor (``NegotiateOptions.use_ntlm``) needs an exact domain match, so it lists the
users with and without the domain. Extra arguments go on ``sys.path`` first so the
system interpreter can import pyspnego and cryptography from the test virtualenv.
Nothing secret is ever written out: not the tokens, not the passwords.
"""

from __future__ import annotations

import base64
import os
import sys
from typing import Any


def _reply(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _user_name(principal: str) -> str:
    """Return the user part of ``DOMAIN\\user``."""
    return principal.rsplit("\\", 1)[-1]


def serve(spnego: Any) -> None:
    """Answer squid's requests until stdin closes."""
    context: Any = None
    for raw in sys.stdin:
        command, _, blob = raw.strip().partition(" ")
        try:
            token = base64.b64decode(blob) if blob else b""
            if command == "YR":
                context = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
                challenge = context.step(token)
                _reply("TT " + base64.b64encode(challenge or b"").decode())
            elif command == "KK" and context is not None:
                context.step(token)
                if not context.complete:
                    _reply("NA handshake not complete")
                else:
                    _reply("AF " + _user_name(str(context.client_principal)))
                context = None
            else:
                _reply(f"BH unexpected {command or 'empty line'}")
        except Exception as exc:  # noqa: BLE001 - every failure is a refusal
            context = None
            _reply(f"NA {type(exc).__name__}")


def main(argv: list[str]) -> int:
    """Entry point: ``argv`` is ``[USER_FILE, SYS_PATH...]``.

    With ``USER_FILE`` ``--check`` it only tells (exit status 0) whether pyspnego and
    cryptography's native backend import here, as the user it runs as.
    """
    if not argv:
        sys.stderr.write("usage: _squid_ntlm_helper.py USER_FILE|--check [SYS_PATH...]\n")
        return 2
    os.environ["NTLM_USER_FILE"] = argv[0]
    sys.path[:0] = argv[1:]
    try:
        import spnego
        from cryptography.hazmat.primitives import hashes, hmac

        if argv[0] == "--check":  # the primitives NTLM needs, from the native backend
            hmac.HMAC(b"key", hashes.MD5()).update(b"data")
            return 0
    except Exception as exc:  # noqa: BLE001 - any failure means: use another helper
        sys.stderr.write(f"squid ntlm helper: pyspnego unusable: {exc!r}\n")
        if argv[0] == "--check":
            return 1
        for _ in sys.stdin:
            _reply("BH pyspnego unusable")
        return 1
    serve(spnego)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
