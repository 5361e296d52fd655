"""Body formats: FHIR JSON and XML in both directions, and content negotiation.

The request format follows Content-Type (charset parameters allowed); the response format
follows `_format`, else Accept, else JSON. Internally every resource is its FHIR JSON form as a
dict, so operations never see the wire format.
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


def response_media_type(format_parameter: str | None, accept: str | None) -> tuple[Format, str]:
    """Format and media type of the response: `_format` first, then Accept, default JSON."""
    if format_parameter:
        fmt = _FORMAT_PARAMETER.get(format_parameter.strip().lower().replace(" ", "+"))
        if fmt is not None:
            media = format_parameter.strip().lower().replace(" ", "+")
            return fmt, media if media in _MEDIA_FORMATS else DEFAULT_MEDIA_TYPE[fmt]
    if accept:
        for media in _accepted(accept):
            fmt = _MEDIA_FORMATS.get(media)
            if fmt is not None:
                return fmt, media
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


def _accepted(accept: str) -> list[str]:
    """Media types of an Accept header, most preferred first (q=0 dropped)."""
    ranked = []
    for position, item in enumerate(accept.split(",")):
        media, _, params = item.partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, media.strip().lower()))
    return [media for _, _, media in sorted(ranked)]
