"""Find the JSON data a search engine's page or background response carries, whatever it is
wrapped in.

Google sends the same result data in many containers, and changes which one from one year or
page layout to the next:

- ``AF_initDataCallback({key: 'ds:1', hash: '2', data: [...], sideChannel: {}})`` in a page script;
- an object or array assigned inside a plain script (``window.W_jd = {...}``, ``var m = [...]``,
  as ``udm=2`` pages do);
- a JavaScript string literal holding JSON (``var data = "[\\"https:...``), or ``JSON.parse('...')``;
- a background response that starts with the anti-hijacking prefix ``)]}'``, either in
  batchexecute framing (decimal lengths on their own lines, JSON documents nested as strings) or
  in the older ``<hex length>;<chunk>`` framing, whose chunks may be JSON or HTML again.

:func:`json_values` yields every JSON value found in any of them, recursing into chunks and string
literals (data nested past Python's recursion limit, as a hostile page can send, counts as not
JSON); :func:`real_url` undoes however many layers of escaping a URL went through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

XSSI_PREFIX = ")]}'"
_DECODER = json.JSONDecoder()
_MAX_DEPTH = 6  # containers inside containers (a string in a chunk in a response ...)

# Where embedded data starts: after an assignment, a call's "(", an object key's ":" or a list's
# ",", or "return" (AF_initDataCallback's ``data:function(){return [...]}``).
_VALUE_START = re.compile(r"""(?:[=(:,]|\breturn)\s*(?=[\[{"'])""")
_HEX_CHUNK = re.compile(r"\s*([0-9a-fA-F]+);")
_JS_ESCAPE = re.compile(r"\\(u\{[0-9a-fA-F]{1,6}\}|u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|\r\n|.)", re.DOTALL)
_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "0": "\0",
    "\n": "",
    "\r\n": "",
    "\r": "",
}
_URL_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|[/\\\"'])")


def json_values(text: str, depth: int = 0) -> Iterator[Any]:
    """Every JSON value in a page, a script, a JSON document or a ``)]}'`` response."""
    if depth > _MAX_DEPTH:
        return
    body = text.lstrip()
    if body.startswith(XSSI_PREFIX):
        yield from _framed_values(body[len(XSSI_PREFIX) :], depth)
        return
    if body[:1] in ("[", "{"):
        try:
            yield json.loads(body)
            return
        except (json.JSONDecodeError, RecursionError):
            pass  # not one JSON document; look for values inside it
    yield from _embedded_values(text, depth)


def looks_like_data(text: str) -> bool:
    """Might a decoded string hold a container of its own (JSON, or a framed response)?"""
    head = text.lstrip()[:4]
    return len(text) > 2 and (head[:1] in ("[", "{") or head == XSSI_PREFIX)


def _framed_values(body: str, depth: int) -> Iterator[Any]:
    if _HEX_CHUNK.match(body):
        for chunk in _hex_chunks(body):
            yield from json_values(chunk, depth + 1)
        return
    # batchexecute: JSON values, each preceded by a line giving its length, which we need not
    # trust (it counts UTF-16 units in some responses and bytes in others).
    pos = 0
    while pos < len(body):
        while pos < len(body) and (body[pos].isspace() or body[pos].isdigit()):
            pos += 1
        if pos >= len(body):
            return
        try:
            value, pos = _DECODER.raw_decode(body, pos)
        except (json.JSONDecodeError, RecursionError):
            yield from _embedded_values(body[pos:], depth + 1)
            return
        yield value


def _hex_chunks(body: str) -> Iterator[str]:
    """``<hex length>;<chunk>`` ... as in Google's 2019 scroll responses; the length counts
    characters in the captures we have, bytes in other servers' framing, so both are tried."""
    pos = 0
    while pos < len(body):
        header = _HEX_CHUNK.match(body, pos)
        if header is None:
            if body[pos:].strip():
                yield body[pos:]
            return
        length, start = int(header[1], 16), header.end()
        end = start + length
        if not _chunk_boundary(body, end):
            in_bytes = len(body[start:].encode("utf-8")[:length].decode("utf-8", errors="ignore"))
            end = start + in_bytes if _chunk_boundary(body, start + in_bytes) else len(body)
        yield body[start:end]
        pos = end


def _chunk_boundary(body: str, pos: int) -> bool:
    return pos >= len(body.rstrip()) or _HEX_CHUNK.match(body, pos) is not None


def _embedded_values(text: str, depth: int) -> Iterator[Any]:
    """JSON values (and string literals holding JSON) embedded in HTML or JavaScript."""
    covered = 0  # values already decoded end here; what lies inside them is not looked at again
    for match in _VALUE_START.finditer(text):
        start = match.end()
        if start < covered:
            continue
        if text[start] in "\"'":
            literal = _string_literal(text, start)
            if literal is None:
                continue
            value, covered = literal
            if looks_like_data(value):
                yield from json_values(value, depth + 1)
            continue
        try:
            value, covered = _DECODER.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            continue
        yield value


def _string_literal(text: str, start: int) -> tuple[str, int] | None:
    """The decoded JavaScript string literal starting at ``text[start]`` (a quote), and its end."""
    quote = text[start]
    pos = start + 1
    while True:
        end = text.find(quote, pos)
        if end < 0:
            return None
        backslashes = 0
        while text[end - 1 - backslashes] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:
            break
        pos = end + 1
    raw = text[start + 1 : end]
    if "\n" in raw:  # an unescaped newline ends a JS string: this was not one
        return None
    return js_unescape(raw), end + 1


def js_unescape(raw: str) -> str:
    """The value of a JavaScript string literal's body (``\\uXXXX``, ``\\xXX``, ``\\n``, ...)."""
    if "\\" not in raw:
        return raw
    return _JS_ESCAPE.sub(_js_escape_value, raw)


def _js_escape_value(match: re.Match) -> str:
    code = match[1]
    if code.startswith("u{"):
        return _char(int(code[2:-1], 16))
    if len(code) > 1 and code[0] in "ux":
        return _char(int(code[1:], 16))
    return _SIMPLE_ESCAPES.get(code, code)


def _char(point: int) -> str:
    try:
        return chr(point)
    except (ValueError, OverflowError):
        return "\ufffd"


def real_url(url: str) -> str:
    """A URL as the browser would request it, however many times its escapes were escaped.

    Data that went through one JSON or JS layer too many keeps ``\\u003d`` for ``=`` and
    ``\\u0026`` for ``&`` (or ``\\\\u003d``, or ``\\/``); a real URL never contains a backslash,
    so they are decoded until none is left.
    """
    for _ in range(_MAX_DEPTH):
        if "\\" not in url:
            break
        decoded = _URL_ESCAPE.sub(_url_escape_value, url)
        if decoded == url:
            break
        url = decoded
    return url


def _url_escape_value(match: re.Match) -> str:
    code = match[1]
    return _char(int(code[1:], 16)) if len(code) > 1 else code
