"""Body formats: FHIR JSON and XML in both directions, and content negotiation.

The request format follows Content-Type (charset parameters allowed). The response format is
chosen as HAPI FHIR servers (the reference gateway among them) choose it: `_format` first, then
the FHIR media types named in Accept (highest q wins, the first of equals), and where the client
states no usable preference (no Accept, only wildcards such as `*/*` or `application/*`, or only
types that are not FHIR) the format of the request body; JSON when nothing says otherwise.
Internally every resource is its FHIR JSON form as a dict, so operations never see the wire format.
"""

from __future__ import annotations

from typing import Literal

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


def request_format(content_type: str | None, body: bytes) -> tuple[Format, str]:
    """Format and charset of a request body; 415 for anything but FHIR JSON or XML."""
    if not content_type:
        # Tolerate clients that omit the header: the first significant byte tells.
        return ("xml" if body.lstrip()[:1] == b"<" else "json"), "utf-8"
    media, _, params = content_type.partition(";")
    fmt = _MEDIA_FORMATS.get(media.strip().lower())
    if fmt is None:
        raise UnsupportedMediaType(f"content type {media.strip()[:100]!r} is not supported; "
                                   "send application/fhir+json or application/fhir+xml")
    charset = "utf-8"
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"').lower()
    return fmt, charset


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


def decode(body: bytes, fmt: Format, charset: str = "utf-8") -> dict:
    """A resource from a request body, as its FHIR JSON dict."""
    if not body.strip():
        raise CodecError("the request body is empty")
    if fmt == "xml":
        resource = xmlcodec.parse_xml(body)
    else:
        try:
            text: bytes | str = body if charset in ("utf-8", "utf8") else body.decode(charset)
            resource = orjson.loads(text)
        except (orjson.JSONDecodeError, UnicodeDecodeError, LookupError):
            raise CodecError("the request body is not valid JSON") from None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise CodecError("the request body is not a FHIR resource")
    return resource


def encode(resource: dict, fmt: Format) -> bytes:
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
