"""Showing a URL without the credentials it may carry: the one helper for printing or logging URL settings.

A URL setting can hold a password (`postgresql://user:pw@host/db`, `https://user:pw@pushgateway`) or a
credential in its query (`?password=...`, `?sslpassword=...`, `?token=...`). `redact_url` keeps what
helps to diagnose a setting (scheme, user name, host, port, path, the other parameters) and masks the
rest; `redact_urls` does the same to every URL inside a text (an exception message, a log line).
"""

from __future__ import annotations

import re

MASK = "***"
# A query parameter whose lower-cased name contains one of these carries a credential: `password`,
# `sslpassword`, `pwd`, `secret`, `token`, `access_token`, `api_key`, `appkey`, `signature`, `sig`, `auth`...
SENSITIVE_QUERY_WORDS = ("pass", "pwd", "secret", "token", "key", "sig", "auth", "credential", "session")
UNPARSEABLE = "<unparseable URL>"

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# A URL inside a text: a scheme, `://`, then everything up to white space or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """`url` with the password of its user info and the values of credential-like query parameters masked.

    The authority ends at the *last* `@` before the query: a password with an unescaped `@` or `/`
    (which some tools write) is masked whole instead of leaking its tail into the host or path.
    """
    scheme = _SCHEME.match(url)
    if scheme is None:
        return UNPARSEABLE if ("@" in url or "?" in url) else url
    head, rest = url[: scheme.end()], url[scheme.end() :]
    rest, hash_mark, fragment = rest.partition("#")
    before_query, question_mark, query = rest.partition("?")
    if "@" in before_query:
        userinfo, _, host_and_path = before_query.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        before_query = f"{user}{':' + MASK if colon else ''}@{host_and_path}"
    if query:
        query = "&".join(_redact_parameter(parameter) for parameter in query.split("&"))
    return f"{head}{before_query}{question_mark}{query}{hash_mark}{fragment}"


def redact_urls(text: str) -> str:
    """`text` with every URL in it passed through `redact_url`."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def _redact_parameter(parameter: str) -> str:
    name, equals, _value = parameter.partition("=")
    lowered = name.lower()
    if equals and any(word in lowered for word in SENSITIVE_QUERY_WORDS):
        return f"{name}={MASK}"
    return parameter
