"""What the agent may put in a log line or a report: bounded in size, no URL credentials."""

from __future__ import annotations

import urllib.parse

REASON_LIMIT = 1000  # characters; a shadow document is at most 8 KB, a status reason stays well under it


def clip(text: str, limit: int = 300) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def redact_url(url: str) -> str:
    """`url` without its query string and user info: a presigned URL's query is a credential."""
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parsed.hostname or ""
    if parsed.port:
        netloc += f":{parsed.port}"
    query = "?<query redacted>" if parsed.query else ""
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, "", "")) + query
