"""Body formats: FHIR JSON and XML in both directions, and content negotiation.

The request format follows Content-Type (a UTF-8 charset parameter allowed: FHIR bodies are
UTF-8). The response format is chosen as HAPI FHIR servers (the reference gateway among them)
choose it: `_format` first, then the FHIR media types named in Accept (highest q wins, the first of
equals), and where the client states no usable preference (no Accept, only wildcards such as `*/*`
or `application/*`, or only types that are not FHIR) the format of the request body; JSON when
nothing says otherwise. Internally every resource is its FHIR JSON form as a dict, so operations
never see the wire format.

Decoding enforces what FHIR allows in a string, the same for both formats: no control
characters but tab, carriage return and line feed, no Unicode non-characters (U+FFFE, U+FFFF,
U+FDD0..U+FDEF and the last two of every plane), no unpaired surrogates. Such a value could not be
stored faithfully (PostgreSQL refuses NUL) nor answered in XML, so the whole request is refused
with a 400 that names where, never what.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson

from . import xmlcodec
from .errors import CodecError, UnsupportedMediaType

Format = Literal["json", "xml"]

_MEDIA_FORMATS: dict[str, Format] = {
    "application/fhir+json": "json",
    "application/json+fhir": "json",
    "application/json": "json",
    "text/json": "json",
    "application/fhir+xml": "xml",
    "application/xml+fhir": "xml",
    "application/xml": "xml",
    "text/xml": "xml",
}
_FORMAT_PARAMETER: dict[str, Format] = {"json": "json", "xml": "xml", **_MEDIA_FORMATS}
DEFAULT_MEDIA_TYPE: dict[Format, str] = {"json": "application/fhir+json", "xml": "application/fhir+xml"}


_UTF8 = frozenset({"utf-8", "utf8"})


def request_format(content_type: str | None, body: bytes) -> Format:
    """Format of a request body; 415 for anything but FHIR JSON or XML in UTF-8."""
    if not content_type:
        # Tolerate clients that omit the header: the first significant byte tells.
        return "xml" if body.lstrip()[:1] == b"<" else "json"
    media, _, params = content_type.partition(";")
    fmt = _MEDIA_FORMATS.get(media.strip().lower())
    if fmt is None:
        raise UnsupportedMediaType("the content type is not supported; send application/fhir+json "
                                   "or application/fhir+xml")
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8:
            raise UnsupportedMediaType("the charset is not supported; FHIR bodies are UTF-8")
    return fmt


def declared_format(content_type: str | None) -> Format | None:
    """The FHIR format a Content-Type header names, or None (absent, or not FHIR JSON/XML)."""
    if not content_type:
        return None
    return _MEDIA_FORMATS.get(content_type.partition(";")[0].strip().lower())


def response_media_type(format_parameter: str | None, accept: str | None,
                        body_format: Format | None = None) -> tuple[Format, str]:
    """Format and media type of the response: `_format`, then Accept, then the request body's
    format (`body_format`) where the client gave no usable preference, then JSON."""
    if format_parameter:
        media = format_parameter.partition(";")[0].strip().lower().replace(" ", "+")
        fmt = _FORMAT_PARAMETER.get(media)
        if fmt is not None:  # values HAPI does not know (e.g. html) fall through to Accept
            return fmt, media if media in _MEDIA_FORMATS else DEFAULT_MEDIA_TYPE[fmt]
    refused: set[Format] = set()
    wildcards: list[str] = []
    if accept:
        for media, quality in _accepted(accept):
            fmt = _MEDIA_FORMATS.get(media)
            if fmt is not None:
                if quality > 0:
                    return fmt, media
                refused.add(fmt)
            elif quality > 0 and (_covers(media, "json") or _covers(media, "xml")):
                wildcards.append(media)
    # No FHIR type named: the request body's format, unless refused or outside the wildcards given.
    for fmt in (body_format, "json", "xml"):
        if fmt is not None and fmt not in refused and (
                not wildcards or any(_covers(w, fmt) for w in wildcards)):
            return fmt, DEFAULT_MEDIA_TYPE[fmt]
    return "json", DEFAULT_MEDIA_TYPE["json"]


def decode(body: bytes, fmt: Format) -> dict[str, Any]:
    """A resource from a request body, as its FHIR JSON dict."""
    if not body.strip():
        raise CodecError("the request body is empty")
    if fmt == "xml":
        resource = xmlcodec.parse_xml(body)
        check_strings(resource)
    else:
        try:
            resource = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise CodecError("the request body is not valid JSON (UTF-8)") from None
        # Fast path: a body without anything that could spell a forbidden character is walked
        # no further; a suspicious one (which may be a false alarm, e.g. an escaped backslash)
        # is checked value by value.
        # Only a backslash escape or a multi-byte character can spell one: most bodies are
        # plain ASCII without escapes and skip the scan as well.
        if (b"\\" in body or not body.isascii()) and _SUSPECT_JSON.search(body):
            check_strings(resource)
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise CodecError("the request body is not a FHIR resource")
    return resource


# Characters no FHIR string may hold (https://hl7.org/fhir/R4/datatypes.html#string): controls but
# tab, CR, LF; non-characters; surrogates (which only a broken decoder would let through).
NOT_IN_FHIR_STRINGS = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(1, 17)) + "]")
# What in a JSON body may spell one of them: an escaped control character, short (\b, \f) or long
# (or an escaped backslash before "b", "f" or "u00.."), an escaped non-character or surrogate, or
# the UTF-8 bytes of a non-character.
_SUSPECT_JSON = re.compile(
    rb"\\(?:[bf]|u(?:00[01][0-9a-fA-F]|[fF][dD][dDeE][0-9a-fA-F]|[fF]{3}[eEfF]|[dD][89a-fA-F]))"
    rb"|\xef(?:\xb7[\x90-\xaf]|\xbf[\xbe\xbf])|[\xf0-\xf4][\x8f\x9f\xaf\xbf]\xbf[\xbe\xbf]")


def check_strings(resource: Any) -> None:
    """CodecError naming the parameter (else the element path) of the first value, or element
    name, holding a character no FHIR string may hold."""
    pending: list[tuple[Any, str, str]] = [(resource, "", "")]  # (node, path, nearest parameter)
    while pending:
        node, path, named = pending.pop()
        if isinstance(node, dict):
            name = node.get("name")
            if isinstance(name, str) and len(name) <= 64 and not NOT_IN_FHIR_STRINGS.search(name):
                named = name
            items = node.items()
        else:
            items = ((f"[{index}]", value) for index, value in enumerate(node))  # type: ignore[assignment]
        for key, value in items:
            step = f"{path}.{key}" if isinstance(node, dict) else f"{path}{key}"
            if isinstance(node, dict) and NOT_IN_FHIR_STRINGS.search(key):
                raise CodecError(f"an element name in {_where(path, named)} holds a character FHIR does not allow")
            if isinstance(value, str):
                if NOT_IN_FHIR_STRINGS.search(value):
                    raise CodecError(f"{_where(step, named)} holds a character that FHIR strings must not contain")
            elif isinstance(value, (dict, list)):
                pending.append((value, step if len(step) < 200 else path, named))


def _where(path: str, named: str) -> str:
    return f"parameter '{named}'" if named else (path.lstrip(".") or "the resource")


def encode(resource: dict[str, Any], fmt: Format) -> bytes:
    if fmt == "xml":
        return xmlcodec.to_xml(resource)
    return orjson.dumps(resource)


def _accepted(accept: str) -> list[tuple[str, float]]:
    """(media range, q) of an Accept header, most preferred first; equals keep their order."""
    ranked = []
    for position, item in enumerate(accept.split(",")):
        media, _, params = item.partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        media = media.strip().lower()
        if media:
            ranked.append((-quality, position, media))
    return [(media, -negative) for negative, _, media in sorted(ranked)]


def _covers(media_range: str, fmt: Format) -> bool:
    """Whether a wildcard range (`*/*`, `application/*`, `application/fhir+*`, ...) admits a
    media type of the format."""
    if media_range == "*/*":
        return True
    if not media_range.endswith("*"):
        return False
    prefix = media_range[:-1]
    return any(media.startswith(prefix) for media, known in _MEDIA_FORMATS.items() if known == fmt)
