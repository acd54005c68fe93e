"""Passwords out of every URL we print, log, show or record.

A storage URL, tracking URI, DATABASE_URL or Ray address may carry `user:password@`;
messages (ours, or a driver's exception text that quotes the URL) must never repeat it.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@host: the authority runs to the first "/", whitespace or quote;
# its last "@" ends the user info (a password may itself hold "@" or ":").
# A scheme is short: bounding it keeps the search linear on long dotted text.
_AUTHORITY = re.compile(r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{0,30}://)"
                        r"(?P<authority>[^\s/'\"<>]*)")
# Drivers also print libpq keyword strings ("password=secret host=...").
_KEYWORD_PASSWORD = re.compile(
    r"(?i)\b(password|passwd|pwd)\s*=\s*('[^']*'|\"[^\"]*\"|[^\s,;)]+)")


def redact_url(url: str | None) -> str | None:
    """`postgresql://u:secret@h/db` -> `postgresql://u:***@h/db`; other URLs unchanged."""
    if url is None:
        return None
    return redact_text(str(url))


def redact_text(text: str) -> str:
    """`text` with the password of every URL (and every `password=` pair) in it masked."""
    if "@" not in text and "=" not in text:
        return text
    text = _AUTHORITY.sub(_mask_authority, text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", text)


def _mask_authority(match: re.Match) -> str:
    userinfo, at, host = match.group("authority").rpartition("@")
    if not at or ":" not in userinfo:
        return match.group(0)
    user = userinfo.split(":", 1)[0]
    return f"{match.group('scheme')}{user}:{MASK}@{host}"
