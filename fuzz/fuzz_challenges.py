"""atheris target: challenge headers and tokens, through the parser and the auth flow.

Each input is split into header values: they go through ``parse_challenges``,
``find_challenge`` and ``persistent_auth`` (which must never raise), then, as the
``WWW-Authenticate`` headers of a run of 401/200 responses, through a real ``NTLMAuth`` or
``NegotiateAuth`` flow (pyspnego parses any token found). The flow may end or raise
``AuthenticationError``; any other exception is a finding.

    .venv/bin/python fuzz/fuzz_challenges.py -max_total_time=60 fuzz/seeds_challenges
"""

from __future__ import annotations

import sys
import typing

import atheris

with atheris.instrument_imports(include=["httpx_extensions"]):
    import httpx

    from httpx_extensions import AuthenticationError, NegotiateAuth, NTLMAuth
    from httpx_extensions._flow import Job
    from httpx_extensions._headers import find_challenge, parse_challenges, persistent_auth

_AUTHS = [NTLMAuth("EXAMPLE\\alice", "pw"), NegotiateAuth("EXAMPLE\\alice", "pw")]
_STATUSES = [401, 401, 401, 200, 407]


def _values(fdp: atheris.FuzzedDataProvider) -> list[str]:
    count = fdp.ConsumeIntInRange(0, 3)
    text = [fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200)) for _ in range(count)]
    return [v.replace("\r", "").replace("\n", "").replace("\0", "") for v in text]


def test_one_input(data: bytes) -> None:
    """Parse the values, then drive one flow with them; only typed errors may come out."""
    fdp = atheris.FuzzedDataProvider(data)
    values = _values(fdp)
    challenges = parse_challenges(values)
    for challenge in challenges:
        assert challenge.scheme == challenge.scheme.lower()
        assert find_challenge(challenges, challenge.scheme.upper()) is not None
    persistent_auth(values)

    flow = _AUTHS[fdp.ConsumeIntInRange(0, 1)]._flow(httpx.Request("GET", "http://h/"))
    value: typing.Any = None
    try:
        for _ in range(20):
            action = flow.send(value)
            if isinstance(action, Job):
                value = action.fn()
                continue
            headers = [("WWW-Authenticate", v.encode("utf-8")) for v in values]
            status = _STATUSES[fdp.ConsumeIntInRange(0, len(_STATUSES) - 1)]
            ext = {"conn_id": "c1", "conn_tagged": fdp.ConsumeBool()}
            value = httpx.Response(status, headers=headers, extensions=ext, request=action)
            values = _values(fdp) or values
        raise AssertionError("the flow did not end within 20 steps")
    except (StopIteration, AuthenticationError):
        pass
    finally:
        flow.close()


def main() -> None:
    """Run atheris with the command line (libFuzzer flags, corpus directories)."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
