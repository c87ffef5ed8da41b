"""Credentials in storage URLs: hidden wherever a URL or a database driver's words are shown.

A URL is printed and stored with ``redact``; a driver's error text goes through ``mask``, which
hides every password this process was given, whole or in the pieces a parser may have split it
into (an unescaped ``@`` in a password makes SQLAlchemy and the driver see part of it as the host).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

__all__ = ["redact", "mask", "remember"]

_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with every credential replaced by ***: URLs are printed and stored, credentials never.

    The password is everything between the user name and the *last* ``@`` before the host (a
    password with an unescaped ``@`` parses wrongly in SQLAlchemy's ``make_url``, which then
    prints its tail as the host), and query parameters whose name says secret (``password=``,
    ``sslpassword=``, ``token=``, ...) are hidden too.
    """
    if url.startswith("journal:"):
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    main, q, query = rest.partition("?")
    at = main.rfind("@")
    if at >= 0:
        user, colon, _ = main[:at].partition(":")
        main = f"{user}:***@{main[at + 1 :]}" if colon else main
    if q:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={'***' if _SECRET_KEY.search(k) else v}" for k, v in pairs)
    return f"{scheme}://{main}{q}{query}"


def _secrets(url: str) -> list[str]:
    """What ``redact`` hides in ``url``: its password (as ``redact`` finds it) and the values of
    its secret query parameters."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return []
    main, _, query = rest.partition("?")
    at = main.rfind("@")
    found = [main[:at].partition(":")[2]] if at >= 0 else []
    found += [v for k, v in parse_qsl(query, keep_blank_values=True) if _SECRET_KEY.search(k)]
    return [f for f in found if f]


_MIN_PIECE = 3  # a piece of one or two characters would hide those letters everywhere, and tells little
_seen: set[str] = set()  # the secrets of every URL this process checked: ``mask`` hides them in any text


def remember(url: str) -> None:
    """Note ``url``'s secrets: from now on ``mask`` hides them in any text, with or without the URL."""
    _seen.update(_secrets(url))


def _pieces(secret: str) -> set[str]:
    """The secret, and every run of it between the characters where a URL parser may split it
    (``@ : / ? #``), as written and percent-decoded: what a driver that split the URL elsewhere
    prints as a host, a port or a database name."""
    parts = re.split(r"([@:/?#])", secret)
    out = set()
    for i in range(0, len(parts), 2):
        for j in range(i, len(parts), 2):
            piece = "".join(parts[i : j + 1])
            out |= {piece, unquote(piece)}
    return {p for p in out if len(p.strip("@:/?#")) >= _MIN_PIECE}


def mask(text: str, url: str | None = None) -> str:
    """``text`` (a database driver's error, an exception to print) with the credentials of
    ``url`` and of every URL this process checked replaced by ***, also where a driver parsed the
    URL differently and printed part of a password: ``u:HUN@TER2pw@host`` reached psycopg as the
    host ``TER2pw@host``."""
    secrets = set(_seen) | (set(_secrets(url)) if url else set())
    pieces = sorted({p for s in secrets for p in _pieces(s)}, key=len, reverse=True)
    for piece in pieces:  # longest first: a whole password before the parts it holds
        text = text.replace(piece, "***")
    return text
