"""Secrets in URLs and in free text: masked wherever settings are shown or logged.

A secret is a field whose type is ``Annotated[..., SECRET]`` (tokens, keys; ``watcher.config.validate``)
*or* the secret part of a URL: the
password of its user info (``https://user:pass@host``), a query parameter whose name says it is a
credential (``?token=``, ``?key=``, ``?sig=``...) and, for webhook services whose URL is the
credential (Slack, Discord, Microsoft Teams), the path. ``mask_url`` masks those parts and keeps the
rest (scheme, host, port, user name), so a person can still tell which endpoint is meant;
``redact`` does the same to free text (log lines, error messages) and also masks the exact values
``watcher.config.validate.secret_values`` collects from the settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

__all__ = ["MIN_SECRET", "mask_url", "redact", "url_secrets"]

MASK = "********"  # the same as watcher.config.validate.MASK (which imports this module)
# query parameter names that carry credentials (matched anywhere in the name, any case)
_SECRET_PARAM = re.compile(r"token|key|secret|passw|pwd|sig|auth|credential|session|code", re.IGNORECASE)
# services whose webhook URL path is the credential itself
_SECRET_PATH_HOSTS = ("hooks.slack.com", "discord.com", "discordapp.com", "webhook.office.com", "office.com")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
# for text that does not parse as a URL (a broken IPv6 host, a bad port): the same parts by pattern
_USERINFO = re.compile(r"(?<=://)([^/@\s:]*)(?::([^/@\s]*))?@")
_PARAM = re.compile(r"(?<=[?&])([^=&#\s]+)=([^&#\s]*)")
MIN_SECRET = 4  # shorter values would mask ordinary words in log lines


def _secret_path(host: str) -> bool:
    return any(host == h or host.endswith("." + h) for h in _SECRET_PATH_HOSTS)


def mask_url(url: str, *, path_is_secret: bool = False) -> str:
    """``url`` with its secret parts replaced by ``MASK``; text that is not a URL comes back as is."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # an invalid port raises
    except ValueError:
        return _mask_by_pattern(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user = quote(parts.username or "", safe="")
        netloc = f"{user}:{MASK}@{netloc.rsplit('@', 1)[1]}"
    elif "@" in netloc and parts.username:  # user info without a password: a token as user name
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    path = parts.path
    if (path_is_secret or _secret_path(host)) and path.strip("/"):
        first = path.strip("/").split("/")[0]
        path = f"/{first}/{MASK}" if path.strip("/") != first else f"/{MASK}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode([(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))


def _mask_by_pattern(url: str) -> str:
    url = _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@" if m.group(2) is not None else f"{MASK}@", url)
    return _PARAM.sub(
        lambda m: f"{m.group(1)}={MASK}" if _SECRET_PARAM.search(m.group(1)) else m.group(0), url
    )


def url_secrets(url: str, *, path_is_secret: bool = False) -> set[str]:
    """The secret parts of ``url`` (a password, credential parameters, a credential path)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:  # not parsable: what the patterns find
        by_pattern = {m.group(2) or m.group(1) for m in _USERINFO.finditer(url)}
        by_pattern |= {m.group(2) for m in _PARAM.finditer(url) if _SECRET_PARAM.search(m.group(1))}
        return {f for f in by_pattern if f}
    found: set[str] = set()
    if parts.password:
        found.add(parts.password)
    elif "@" in parts.netloc and parts.username:
        found.add(parts.username)
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_PARAM.search(k) and v:
            found.add(v)
    if (path_is_secret or _secret_path(parts.hostname or "")) and parts.path.strip("/"):
        found.add(parts.path.strip("/").split("/", 1)[-1])
    return found


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret and every URL's secret parts masked."""
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= MIN_SECRET and value in text:
            text = text.replace(value, MASK)
    if "://" in text:
        text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    return text
