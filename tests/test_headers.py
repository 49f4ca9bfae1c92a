"""Challenge parsing: several headers, comma-joined lists, token68 vs auth-params, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from httpx_extensions._headers import (
    Challenge,
    find_challenge,
    parse_challenges,
    persistent_auth,
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["Negotiate, NTLM"], [Challenge("negotiate"), Challenge("ntlm")]),
        (["Negotiate", "NTLM"], [Challenge("negotiate"), Challenge("ntlm")]),
        (["NEGOTIATE  oYG3MIG0oAM= "], [Challenge("negotiate", token="oYG3MIG0oAM=")]),
        (["ntlm TlRMTVNTUAACAAAA"], [Challenge("ntlm", token="TlRMTVNTUAACAAAA")]),
        (
            ['Basic realm="x", NTLM TlRM=='],
            [Challenge("basic", params=(("realm", "x"),)), Challenge("ntlm", token="TlRM==")],
        ),
        (
            ['Digest realm="a,b", nonce=abc, qop="auth", Negotiate YII+', "ntlm"],
            [
                Challenge("digest", params=(("realm", "a,b"), ("nonce", "abc"), ("qop", "auth"))),
                Challenge("negotiate", token="YII+"),
                Challenge("ntlm"),
            ],
        ),
        (["Negotiate abc=,NTLM"], [Challenge("negotiate", token="abc="), Challenge("ntlm")]),
        (
            ['Bearer realm=x , error="in\\"valid" ,Basic'],
            [
                Challenge("bearer", params=(("realm", "x"), ("error", 'in"valid'))),
                Challenge("basic"),
            ],
        ),
        (["x=y, , =", ",,,", ""], []),
        (['Basic realm="unterminated'], [Challenge("basic")]),
    ],
)
def test_parse_examples(values: list[str], expected: list[Challenge]) -> None:
    """Known header shapes parse to the expected challenges, garbage is skipped."""
    assert parse_challenges(values) == expected


def test_find_challenge_and_param_are_case_insensitive() -> None:
    """Scheme lookup and parameter lookup ignore case."""
    challenges = parse_challenges(['Basic Realm="R"', "NeGoTiAtE tok"])
    negotiate = find_challenge(challenges, "Negotiate")
    assert negotiate is not None and negotiate.token == "tok"
    basic = find_challenge(challenges, "BASIC")
    assert basic is not None and basic.param("REALM") == "R"
    assert basic.param("nonce") is None
    assert find_challenge(challenges, "ntlm") is None


def test_persistent_auth() -> None:
    """Persistent-Auth reads true/false, anything else is unknown."""
    assert persistent_auth(["true"]) is True
    assert persistent_auth([" False "]) is False
    assert persistent_auth(["maybe"]) is None
    assert persistent_auth([]) is None


@given(st.lists(st.text(max_size=80), max_size=4))
def test_fuzz_never_raises(values: list[str]) -> None:
    """Any header text parses without an exception into well-formed challenges."""
    for challenge in parse_challenges(values):
        assert challenge.scheme and challenge.scheme == challenge.scheme.lower()
        assert challenge.token is None or not challenge.params


_tokens = st.from_regex(r"[A-Za-z][A-Za-z0-9\-]{0,10}", fullmatch=True)
_token68 = st.from_regex(r"[A-Za-z0-9+/]{1,40}={0,2}", fullmatch=True)
_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@st.composite
def _challenge(draw: st.DrawFn) -> Challenge:
    scheme = draw(_tokens).lower()
    kind = draw(st.sampled_from(["bare", "token", "params"]))
    if kind == "token":
        return Challenge(scheme, token=draw(_token68))
    if kind == "params":
        names = draw(st.lists(_tokens.map(str.lower), min_size=1, max_size=3, unique=True))
        return Challenge(scheme, params=tuple((n, draw(_value)) for n in names))
    return Challenge(scheme)


def _render(c: Challenge) -> str:
    if c.token:
        return f"{c.scheme.upper()} {c.token}"
    if c.params:
        quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for _, v in c.params)
        return c.scheme + " " + ", ".join(f'{n}="{q}"' for (n, _), q in zip(c.params, quoted))
    return c.scheme


@given(st.lists(_challenge(), min_size=1, max_size=4), st.booleans())
def test_roundtrip(challenges: list[Challenge], joined: bool) -> None:
    """Rendered challenges parse back identically, joined in one header or one per header."""
    rendered = [_render(c) for c in challenges]
    values = [", ".join(rendered)] if joined else rendered
    assert parse_challenges(values) == challenges


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("NTLM !!!notbase64", [Challenge("ntlm", malformed=True)]),
        ("Negotiate a b, NTLM", [Challenge("negotiate", malformed=True), Challenge("ntlm")]),
        ("NTLM ", [Challenge("ntlm")]),
        ("Basic realm=x", [Challenge("basic", params=(("realm", "x"),))]),
    ],
)
def test_unreadable_token_is_marked_malformed(value: str, expected: list[Challenge]) -> None:
    """Text after the scheme that is neither token68 nor auth-params marks the challenge."""
    assert parse_challenges([value]) == expected
