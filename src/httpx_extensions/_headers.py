"""Pure parsing of ``WWW-Authenticate`` / ``Proxy-Authenticate`` challenges (RFC 9110 11.6.1).

Theory of operation: this module knows header *text* only. It never raises on any input:
a malformed part of a header is skipped up to the next comma, and what could be read is
kept. It knows nothing of pyspnego, connections or the auth flow.

Grammar handled (RFC 9110)::

    challenge  = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param = token BWS "=" BWS ( token / quoted-string )

Several challenges may share one header, comma separated (``Negotiate, NTLM``), and a
response may carry several headers. After a comma, ``name=`` starts another parameter of
the current challenge; anything else starts a new challenge.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Challenge", "find_challenge", "parse_challenges", "persistent_auth"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_OWS = re.compile(r"[ \t]*")
_SP = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class Challenge:
    """One challenge: ``scheme`` lower-cased, then either a ``token`` (token68) or ``params``.

    ``params`` holds ``(name, value)`` pairs with lower-cased names, in header order.
    ``malformed`` is true when text followed the scheme that is neither a token68 nor an
    auth-param (``NTLM !!!notbase64``): a token was sent, but it cannot be read.
    """

    scheme: str
    token: str | None = None
    params: tuple[tuple[str, str], ...] = field(default=())
    malformed: bool = False

    def param(self, name: str) -> str | None:
        """Return the value of parameter ``name`` (case-insensitive), or ``None``."""
        name = name.lower()
        return next((v for k, v in self.params if k == name), None)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse every challenge found in the given header values, in order.

    Args:
        values: the raw values of every ``WWW-Authenticate`` (or ``Proxy-Authenticate``)
            header of one response, e.g. ``response.headers.get_list("WWW-Authenticate")``.

    Returns:
        The challenges read; garbage is skipped, so the list may be empty.

    Raises:
        Nothing: any text is accepted.
    """
    out: list[Challenge] = []
    for value in values:
        out.extend(_Parser(value).parse())
    return out


def find_challenge(challenges: Iterable[Challenge], scheme: str) -> Challenge | None:
    """Return the first challenge of ``scheme`` (case-insensitive), or ``None``."""
    scheme = scheme.lower()
    return next((c for c in challenges if c.scheme == scheme), None)


def persistent_auth(values: Iterable[str]) -> bool | None:
    """Read ``Persistent-Auth`` values: ``True``, ``False``, or ``None`` when absent or unclear."""
    for value in values:
        word = value.strip().lower()
        if word in ("true", "false"):
            return word == "true"
    return None


class _Parser:
    """A cursor over one header value; every method returns what it read or ``None``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> list[Challenge]:
        out: list[Challenge] = []
        while self._skip_separators():
            scheme = self._match(_TOKEN)
            if scheme is None:
                self._skip_to_comma()
                continue
            challenge = self._challenge_body(scheme.lower())
            if challenge is not None:
                out.append(challenge)
        return out

    def _challenge_body(self, scheme: str) -> Challenge | None:
        # Case 1: nothing follows (end or comma) -> bare scheme.
        # Case 2: a token68 followed by OWS and then end or comma.
        # Case 3: a list of auth-params.
        # Case 4: anything else glued to the scheme (``x=y``) is garbage: skip it.
        # Case 5: after a space, neither a token68 nor ``name=``: a malformed token.
        if self._at_end_or_comma():
            return Challenge(scheme)
        if not self._match(_SP):
            self._skip_to_comma()
            return None
        if self._at_end_or_comma():
            return Challenge(scheme)
        start = self.pos
        token = self._match(_TOKEN68)
        if token is not None:
            self._match(_OWS)
            if self._at_end_or_comma():
                return Challenge(scheme, token=token)
        self.pos = start
        if not self._param_follows():
            self._skip_to_comma()
            return Challenge(scheme, malformed=True)
        return Challenge(scheme, params=tuple(self._params()))

    def _param_follows(self) -> bool:
        """Whether ``name =`` starts at the cursor (the cursor does not move)."""
        save = self.pos
        name = self._match(_TOKEN)
        self._match(_OWS)
        is_param = name is not None and self._peek() == "="
        self.pos = save
        return is_param

    def _params(self) -> list[tuple[str, str]]:
        params: list[tuple[str, str]] = []
        while True:
            name = self._match(_TOKEN)
            self._match(_OWS)
            if name is None or not self._eat("="):
                self.pos = self._next_comma()
                return params
            self._match(_OWS)
            value = self._quoted() if self._peek() == '"' else self._match(_TOKEN)
            if value is not None:
                params.append((name.lower(), value))
            self._match(_OWS)
            if not self._at_end_or_comma():
                self._skip_to_comma()
            # After a comma: "name =" continues this challenge, anything else starts a new one.
            save = self.pos
            if not self._skip_separators():
                return params
            nxt = self._match(_TOKEN)
            self._match(_OWS)
            is_param = nxt is not None and self._peek() == "="
            self.pos = save
            if not is_param:
                return params
            self._skip_separators()

    def _quoted(self) -> str | None:
        self.pos += 1  # opening quote
        chars: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == "\\" and self.pos < len(self.text):
                chars.append(self.text[self.pos])
                self.pos += 1
            elif ch == '"':
                return "".join(chars)
            else:
                chars.append(ch)
        return None  # unterminated: drop the value

    def _skip_separators(self) -> bool:
        """Skip spaces and commas; return whether anything is left."""
        while self.pos < len(self.text) and self.text[self.pos] in " \t,":
            self.pos += 1
        return self.pos < len(self.text)

    def _skip_to_comma(self) -> None:
        self.pos = self._next_comma()

    def _next_comma(self) -> int:
        i = self.text.find(",", self.pos)
        return len(self.text) if i < 0 else i

    def _at_end_or_comma(self) -> bool:
        return self.pos >= len(self.text) or self.text[self.pos] == ","

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _eat(self, ch: str) -> bool:
        if self._peek() == ch:
            self.pos += 1
            return True
        return False

    def _match(self, pattern: re.Pattern[str]) -> str | None:
        m = pattern.match(self.text, self.pos)
        if m is None or not m.group():
            return None
        self.pos = m.end()
        return m.group()
