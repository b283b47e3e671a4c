"""Keep the access token and the secret out of every message, log line and chained cause.

The token rides in the query string of every call (docs/contract.md, "Transport and
authentication") and the secret in the token request's, so any URL is a secret until redacted.
"""

from __future__ import annotations

import bisect
import contextlib
import html
import itertools
import json
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, quote_plus

from multidict import CIMultiDict, CIMultiDictProxy

MASK = "***"
#: The fewest characters of a secret or token masked: a shorter one cannot be told apart from
#: the words around it (masking "ab" would mask every "ab" of a message).
SHORTEST_MASKED = 4


class SecretHolder(Protocol):
    """Something that knows secrets in use: a client's session (its secret and tokens)."""

    @property
    def secrets(self) -> Iterable[str | None]: ...


_holders: weakref.WeakSet[SecretHolder] = weakref.WeakSet()
#: Held while ``_holders`` is added to or read: a client made on one thread while an error was
#: made on another (a threaded server) changed the set under the reader, and the error was a
#: raw "RuntimeError: Set changed size during iteration". (Holders that die while it is read
#: are set aside by the WeakSet itself.)
_holders_lock = threading.RLock()  # re-entrant: a finalizer the GC runs in it may make an error


def _new_holders_lock() -> None:
    """A forked child's own: held by another thread at the fork, it was copied held for ever."""
    global _holders_lock
    _holders_lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_new_holders_lock)


def watch(holder: SecretHolder) -> None:
    """Mask ``holder``'s secrets in every error from now on, for as long as it lives."""
    with _holders_lock:
        _holders.add(holder)


def live_secrets() -> list[str | None]:
    """The secrets of every live holder: what every error message is redacted against."""
    with _holders_lock:
        while True:
            try:
                holders = list(_holders)
                break
            except RuntimeError:
                # A holder collected on another thread as this one starts reading: the
                # WeakSet's removal can land between its guard's look and the read (CPython's
                # weakref.WeakSet), and the error made was a raw "RuntimeError: Set changed
                # size during iteration" (seen on 3.10 under load). Read again: it is done.
                continue
    return [secret for holder in holders for secret in holder.secrets]


#: A value runs up to the end of its parameter, or of a URL quoted in ``<...>`` (a ``Link``
#: header's): its ``>; rel="next"`` was masked with it. A URL holds no raw ``<`` or ``>``; a
#: value quoted in them (``access_token=<...>``, in free text) is masked within them.
_SECRET_PARAMS = re.compile(r"((?:access_token|secret)=<?)[^&#\s'\"<>]*", re.IGNORECASE)
#: The same fields in a JSON body or a dict's repr quoted back (their quotes escaped too, as
#: a body quoted inside a JSON string): a token answer the client could not read (not JSON, in
#: a gateway's page) held the token the service had just issued, which no client knew yet;
#: so did one naming it ``accessToken`` or giving it in a list (``["..."]``). A value runs on
#: through its JSON escapes (``\/`` as PHP writes a ``/``, ``\u002b``; escaped again in a
#: quoted body, ``\\\/`` by PHP's) up to its closing quote, raw or escaped: it was masked up
#: to its first backslash (or the third of ``\\\/``), and the rest of the token was shown.
_SECRET_FIELDS = re.compile(
    r"""(\\?["'](?:access[_-]?token|secret)\\?["']\s*:\s*(?:\[\s*)?\\?["'])(?:[^"'\\]|\\+[^"'\\])*""",
    re.IGNORECASE,
)

#: A quote as a page escapes it (``&quot;``, ``&#34;``, ``&#x27;``...), or a raw or escaped one.
_ANY_QUOTE = r"""(?:&(?:quot|apos|\#0*3[49]|\#x0*2[27]);|\\?["'])"""
#: The same fields in a body no parser takes that quotes them otherwise: HTML-escaped in a
#: gateway's page, an XML element (CDATA or not), a header line a proxy quoted
#: (``Access-Token: ...``). The token the service had just issued, which no client knew yet,
#: was in the error's message and ``body``.
_SECRET_MARKUP = re.compile(
    rf"""(
        (?:access_token|secret){_ANY_QUOTE}\s*:\s*{_ANY_QUOTE}
      | <(?:access_token|secret)\s*>\s*(?:<!\[CDATA\[)?
      | (?:^|(?<=[\s"'>;]))(?:x-)?(?:access[_-]token|secret)[ \t]*:[ \t]*
    )(?:[^\s"'&<>\\\]] | \\{{1,2}}(?:/|u[0-9a-f]{{4}}))+""",  # a value: an empty one is nothing
    # to mask ("<secret>" was "<***>***"); through the JSON escapes a token may hold ("\/" as
    # PHP writes a "/", "\u002b"), shown in a gateway's page: it was masked up to them.
    re.IGNORECASE | re.MULTILINE | re.VERBOSE,
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with ``access_token=``/``secret=`` values, ``"access_token": "..."`` and
    ``"secret": "..."`` fields (HTML-escaped too), ``<access_token>`` elements, ``Access-Token:``
    header lines, and every known secret masked.

    A secret is masked raw and URL-encoded too, in any mix (yarl leaves ``/`` as is in a query
    value but encodes ``+``), as it appears when a service or a proxy echoes the query back.
    """
    text = _SECRET_PARAMS.sub(r"\g<1>" + MASK, text)
    text = _SECRET_FIELDS.sub(r"\g<1>" + MASK, text)
    folded = text.lower()
    if "token" in folded or "secret" in folded:  # 0.6 ms on 4 KB otherwise, for nothing
        text = _SECRET_MARKUP.sub(r"\g<1>" + MASK, text)
    # Each once: a client's every derived client (with_options) holds its secret and token.
    known = dict.fromkeys(
        secret
        for secret in (*secrets, *live_secrets())
        if secret and len(secret) >= SHORTEST_MASKED
    )
    masks = _masks_of(known)
    # Only the patterns of the secrets whose anchor the text holds: each one scanned the text,
    # 1.3 ms an error once a lazy walk had remembered 256 secrets (or 128 clients were alive).
    # Masking drops no anchor's character, so the text as it came answers for every secret.
    seen = (text if text.isascii() else _like_ascii(text)).lower()
    for mask in masks:
        if mask.anchor in seen:
            text = mask.pattern.sub(MASK, text)
    # Then the runs of any of them, all at once: masking one secret's runs first could cut a
    # whole other one (two canaries sharing "-CANARY-") where its own match would no longer find it.
    longer = [mask for mask in masks if mask.forms]
    return _mask_fragments(text, longer) if longer else text


def masked_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` with the token and the secret masked in every name and value, read as
    aiohttp's are (case-insensitive, each of a repeated header kept): a service or a proxy
    answering with a ``Content-Location``, a ``Link``, an echo of the request URL (or of its
    parameters as headers of their names) showed the token to a user printing
    ``dm.last_response.headers`` or an error's ``headers``.

    Read all at once first (a header value holds no line break): each value on its own cost
    some 100 us on the usual six headers, and one holding a secret is rare.
    """
    said = "\n".join((*headers.keys(), *headers.values()))  # a header named after the token too
    if redact(said) == said:
        return headers
    return CIMultiDictProxy(
        CIMultiDict((redact(name), redact(value)) for name, value in headers.items())
    )


def redis_password(url: str) -> str | None:
    """The password redis-py sends for a Redis URL (the one before its ``@``, or a
    ``?password=`` of its query; percent-decoded), or None; given none, its user name (see
    :func:`redis_secret`)."""
    try:
        from redis.asyncio.connection import parse_url

        parsed = parse_url(url)
    except (ImportError, ValueError):  # no redis extra; a URL refused where it is read
        return None
    return redis_secret(parsed.get("password"), parsed.get("username"))


def redis_secret(password: object, username: object) -> str | None:
    """The secret redis-py sends as AUTH's arguments: ``password``, or, given none, the
    ``username``: a password written without its colon (``redis://PASSWORD@HOST``) is a user
    name to redis-py, sent as AUTH's first argument, and a Redis that does not know AUTH
    quoted it as it quotes a password ("with args beginning with: 'PASSWORD' ''"). A user name
    is masked only there (see :func:`without_password`)."""
    if isinstance(password, str) and password:
        return password
    if isinstance(username, str) and username:
        return _UserName(username)
    return None


class _UserName(str):
    """A user name sent with no password (:func:`redis_secret`): masked where Redis quotes
    AUTH's arguments back, not anywhere, as a password of 4 characters or more is. A real one
    (an ACL user without a password) named a socket's directory, or a host: ``unix://redis@/
    run/redis/redis-server.sock`` said "connecting to /run/***/***-server.sock"."""

    __slots__ = ()


#: Said of Redis's refusal of AUTH given a user name and no password: ``redis://PASSWORD@HOST``,
#: a password written without its colon (never shown: it may be one).
NO_COLON = (
    "a user name was sent with no password: a password goes after a colon, redis://:PASSWORD@HOST"
)


def no_colon_hint(secret: str | None) -> str:
    """``"; "`` and :data:`NO_COLON` for the ``secret`` redis-py sent (:func:`redis_secret`)
    when it is a user name given no password, else "": refused, "invalid username-password
    pair" said nothing of a password's missing colon."""
    return f"; {NO_COLON}" if isinstance(secret, _UserName) else ""


def without_password(text: str, password: str | None) -> str:
    """``text`` (Redis's words) with a Redis ``password`` masked where Redis quotes it (a Redis
    that does not know AUTH, renamed away or a proxy without it, answers "unknown command
    'AUTH', with args beginning with: '<password>'", cut at 128 bytes), and, of 4 characters
    or more (a password, not a user name sent with none), anywhere, raw or URL-encoded, in any
    case. Not its runs, as :func:`redact` masks
    a token's: "invalid username-password pair" lost its "-password" to a password holding it,
    the very message that says it is wrong; nor a short one unquoted, which took every "a" of
    "Connection refused"."""
    if not password:
        return text
    sent = password.replace("\r", " ").replace("\n", " ")  # as Redis says a line break
    text = _quoted_masked(text, sent)
    if len(password) < 4 or isinstance(password, _UserName):
        return text
    return _secret_pattern(password).sub(MASK, text)


def _quoted_masked(text: str, sent: str) -> str:
    """``text`` with ``sent`` masked where Redis quotes it (``'<sent>'``), whole or its start of
    :data:`FRAGMENT` characters or more: Redis cuts it at 128 bytes, inside a character for a
    non-ASCII one, whose bytes left redis-py reads as U+FFFD. Quotes within ``sent`` are its
    own: a quoted value was taken to end at the first (``'abc'def...'``), and the rest of a
    password holding one (a cut one: all of it but its first characters) was said. Of quoted
    values that overlap, the one closing last: the password is AUTH's last argument, and a
    user name before it could read as its start (``'a' 'a' '`` for a password ``a' ``, whose
    mask took the user name and left the password said).

    In time linear in ``text`` and ``sent``: each quote's value was read again for each quote
    within it, and ``sent`` compared afresh from each quote (0.78-1.15 s on 3,000 quotes)."""
    quotes = [found.start() for found in _QUOTE.finditer(text)]
    if not quotes:
        return text
    same = _prefix_lengths(text, sent, [start + 1 for start in quotes])
    cut_ends: dict[int, int] = {}
    closes = [
        _quoted_close(text, start, sent, same[i], quotes, cut_ends)
        for i, start in enumerate(quotes)
    ]
    # The next quote whose value closes later than each one's: any within its value does then.
    later = [len(quotes)] * len(quotes)
    waiting: list[int] = []
    for i, close in enumerate(closes):
        while waiting and closes[waiting[-1]] < close:
            later[waiting.pop()] = i
        waiting.append(i)
    shown, at = [], 0
    for i, start in enumerate(quotes):
        close = closes[i]
        if start < at or close < 0 or (later[i] < len(quotes) and quotes[later[i]] <= close):
            continue
        shown += [text[at:start], f"'{MASK}'"]
        at = close + 1
    return "".join(shown) + text[at:]


_QUOTE = re.compile("'")
_CUT_CHARACTERS = re.compile("\ufffd*")


def _quoted_close(
    text: str, start: int, sent: str, same: int, quotes: list[int], cut_ends: dict[int, int]
) -> int:
    """Where the quote that closes ``sent`` quoted from ``text[start]`` (a quote whose next
    ``same`` characters are the first of ``sent``) is: after all of it, or after its start of
    :data:`FRAGMENT` characters or more, however long; or -1. ``quotes``: where ``text``'s
    quotes are; ``cut_ends``: where each run of U+FFFD found so far ends, by its start."""
    begin = start + 1
    end = begin + same
    if end not in cut_ends:
        cut = _CUT_CHARACTERS.match(text, end)
        cut_ends[end] = cut.end() if cut else end
    end = cut_ends[end]
    if text.startswith("'", end) and same >= min(len(sent), FRAGMENT):
        return end
    # The last quote within its start, if FRAGMENT characters or more come before it.
    last = quotes[bisect.bisect_left(quotes, begin + same) - 1]
    return last if last >= begin + FRAGMENT else -1


def _prefix_lengths(text: str, sent: str, positions: list[int]) -> list[int]:
    """For each of ``positions`` (in increasing order), how many characters of ``text`` from
    there are the first ones of ``sent``, in time linear in both (the Z algorithm)."""
    size = len(sent)
    own = [size] + [0] * (size - 1)  # own[i]: how many of sent's from i are its first ones
    left = right = 0  # sent[left:right] (then text[left:right]) is sent[: right - left]
    for i in range(1, size):
        k = min(right - i, own[i - left]) if i < right else 0
        while i + k < size and sent[k] == sent[i + k]:
            k += 1
        own[i] = k
        if i + k > right:
            left, right = i, i + k
    lengths = []
    left = right = 0
    for i in positions:
        k = min(right - i, own[i - left]) if i < right else 0
        while k < size and i + k < len(text) and text[i + k] == sent[k]:
            k += 1
        lengths.append(k)
        if i + k > right:
            left, right = i, i + k
    return lengths


class _Masks:
    """What masks one secret, made once while it is in use: its pattern and its anchor, its
    forms (when it is long enough for its runs to be masked) and their runs in lower case."""

    __slots__ = ("anchor", "forms", "pattern", "runs", "secret")

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.pattern = _secret_pattern(secret)
        self.anchor = _anchor(secret)
        self.forms = _forms(secret) if len(secret) > FRAGMENT else ()
        self.runs = frozenset().union(
            *(_fragments(_lower(form)) for form in self.forms),
            # And with "İ" as "i", as a text holding one is read (see _mask_fragments): only
            # its two-character lower case was there, and a secret holding it, quoted in
            # another case, cut or echoed twice, was shown in every run of 8 holding one.
            *(
                _fragments(_lower(form.replace("\u0130", "i")))
                for form in self.forms
                if "\u0130" in form
            ),
        )


#: The masks of the secrets in use, by secret. Not a cache of a fixed size: every error masks
#: the secrets of every live client, and an agency's process holds a client for each tenant.
#: Past 64 of them (an LRU cache's size), each error compiled every secret's pattern again,
#: met in turn (100 tenants: 59 ms an error, 1,000: 1.6 s, the event loop held meanwhile).
_masks: dict[str, _Masks] = {}
#: Masks kept beyond those in use, before those no longer in use are dropped.
_SPARE_MASKS = 256


def _masks_of(secrets: Iterable[str]) -> list[_Masks]:
    """The masks of ``secrets`` (every secret in use among them), made for those new."""
    global _masks
    table = _masks
    masks = []
    for secret in secrets:
        mask = table.get(secret)
        if mask is None:
            mask = table[secret] = _Masks(secret)
        masks.append(mask)
    if len(table) > 2 * len(masks) + _SPARE_MASKS:
        # Those of clients gone (a token replaced, a tenant's client closed and collected).
        _masks = {mask.secret: mask for mask in masks}
    return masks


#: A run of this many characters of a secret, raw or URL-encoded, is masked wherever it
#: appears. A message that quotes a value cut short (``'a449c4458ea1...eddcca9af9481'``, or a
#: field the service echoed cut at 200 characters) held most of a token, which the
#: whole-secret match no longer found.
FRAGMENT = 8


def _mask_fragments(text: str, masks: list[_Masks]) -> str:
    """``text`` with every run of ``FRAGMENT`` characters or more of a secret masked."""
    folded = _lower(text)
    if len(folded) == len(text):  # any case, as the whole secret is matched
        spans = _spans(folded, _runs(masks))
    else:  # lower() made an "İ" two characters: positions would no longer match the text
        spans = _spans(text, _raw_runs(masks))
        # And in any case, with "İ" as "i", which keeps the positions: the runs in another
        # case (upper-cased, or URL-encoded in lower-case hex) beside an "İ" (a Turkish name
        # quoted) were shown whole.
        folded = _lower(text.replace("\u0130", "i"))
        if len(folded) == len(text):  # no other letter lower-cases longer (Unicode 15)
            spans = _merged(spans + _spans(folded, _runs(masks)))
    # A secret outside ASCII only: one of ASCII holding "%C3%A9" or "\\u00e9" as it is, cut, was
    # 8 characters of it, masked (no escape of an ASCII secret stands for a letter outside it).
    escaped = bool(spans) and not all(mask.secret.isascii() for mask in masks)
    # Each span's text and the mask, then joined: the whole text made again for each span
    # masked took a second for 20 headers of 8 KB looked at joined, each echoing a run of the
    # token 900 times (the copies grew as the square of the text).
    shown, at = [], 0
    for start, end in spans:
        if escaped and _characters(text[start:end]) < FRAGMENT:
            continue  # a customer's escaped text sharing a character or two with a secret's
        if _escapes_alone(text, start, end):
            continue  # "\u002F\u002F" of a URL, for a secret holding "//" (or "/+")
        shown += [text[at:start], MASK]
        at = end
    return "".join(shown) + text[at:] if shown else text


#: An escape of one character: JSON's (once or twice), a URL's, a page's entity. Its
#: backslashes looked at from the first of their run alone: from each of a run of thousands
#: (a page of them, for a secret holding "\\\\"), the rest of the run was read, in time
#: growing as the square of the run (16 KB: 2 s). The same escapes, found from the run's start.
_AN_ESCAPE = r"(?<!\\)\\+u[0-9a-f]{4}|(?<!\\)\\+/|%[0-9a-f]{2}|&(?:\#x?[0-9a-f]+|[a-z]+);"
_ONE_ESCAPE = re.compile(_AN_ESCAPE, re.IGNORECASE)


def _escapes_alone(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is the "//" of a URL escaped, those escapes it cuts at its
    ends counted whole: a run of 8 of a secret's escaped form may hold two escapes alone, of
    "/" and another character side by side ("2F\\u002F" of "//" as .NET writes it, or
    "\\u002F\\u002" of "/+" cut in its "+"), and every URL a body or a page quoted so
    ("https:\\u002F\\u002F...", "https:&#x2F;&#x2F;...") lost its "//" and the letters beside.
    Two "/" alone, not 7 characters of any kind (a secret's "::::;\\{" URL-encoded and cut to
    them): a run of 8 characters of the secret's escaped form is masked, as it always was."""
    # Whole escapes from a little before the span to a little after: those it cuts, whole.
    # (An escape of "/" whose backslashes start more than that before is not one alone.)
    at, slashes = start, 0
    window = (max(0, start - _LONGEST_ESCAPE), end + _LONGEST_ESCAPE)
    for escape in _ONE_ESCAPE.finditer(text, *window):
        if escape.end() <= at:
            continue  # before the span, or wholly within its part already covered
        if escape.start() > at or not _SLASH.fullmatch(escape.group()):
            return False  # a character of the span outside any escape, or not a "/"
        at, slashes = escape.end(), slashes + 1
        if at >= end:
            return slashes <= 2
    return False


#: The most characters of one escape :func:`_escapes_alone` looks back for (``&#x0002F;``).
_LONGEST_ESCAPE = 16
#: An escape of "/": JSON's (once or twice), a URL's, a page's entity.
_SLASH = re.compile(r"\\+(?:u002f|/)|%2f|&(?:\#x0*2f|\#0*47|sol);", re.IGNORECASE)


#: How a character outside ASCII is escaped, as one: "\u5bc6" (once or twice), "%E5%AF%86".
_ESCAPED = re.compile(
    r"(?<!\\)\\+u(?:[1-9a-f][0-9a-f]{3}|0[1-9a-f][0-9a-f]{2}|00[89a-f][0-9a-f])"
    r"|%[c-f][0-9a-f](?:%[89ab][0-9a-f]){1,3}",
    re.IGNORECASE,
)


def _characters(span: str) -> int:
    """How many characters ``span`` stands for, each escape of one outside ASCII as one: 8
    characters of a secret's escaped form (``\\u5bc6\\u``) may hold one of its characters
    alone, and a customer's name ``\\u``-escaped or URL-encoded beside, sharing it, was masked
    with them (``***7801\\u738b...``), unreadable."""
    if "\\" not in span and "%" not in span:
        return len(span)
    return len(span) - sum(len(escape) - 1 for escape in _ESCAPED.findall(span))


def _lower(text: str) -> str:
    """``text`` lower-cased, a final sigma as any other: "Σ" lower-cases to "ς" at a word's end
    and to "σ" within one, so a run of a secret cut right after its "Σ" (or "σ" upper-cased)
    matched none of the secret's runs, and its start was shown."""
    folded = text.lower()
    return folded.replace("\u03c2", "\u03c3") if "\u03c2" in folded else folded


def _spans(folded: str, grams: frozenset[str]) -> list[list[int]]:
    """Where ``folded`` holds runs of ``FRAGMENT`` characters among ``grams``, in order, those
    that overlap or touch as one.

    Looked for only in the stretches of ``folded`` made of the characters of ``grams``, where
    any of them must be: each position of the text was looked up, 1.4-1.6 ms of an error of
    4 KB (in Chinese, or words no secret holds) with a secret in use. Spans of two stretches
    never touch (a character of neither is between them), so they are the same spans."""
    spans: list[list[int]] = []
    for stretch in _stretches(grams).finditer(folded):
        for start in range(stretch.start(), stretch.end() - FRAGMENT + 1):
            if folded[start : start + FRAGMENT] in grams:
                if spans and start <= spans[-1][1]:
                    spans[-1][1] = start + FRAGMENT
                else:
                    spans.append([start, start + FRAGMENT])
    return spans


#: The patterns of :func:`_stretches`, by the runs they are made of, the latest ones.
_stretch_patterns: dict[frozenset[str], re.Pattern[str]] = {}


def _stretches(grams: frozenset[str]) -> re.Pattern[str]:
    """Matches each stretch of ``FRAGMENT`` characters or more, all of them characters of
    ``grams``: a run among ``grams`` is within one."""

    def made() -> re.Pattern[str]:
        chars = "".join(f"\\U{ord(char):08x}" for char in sorted(set().union(*grams)))
        # No run at all (none to mask): a class of no character is no pattern.
        return re.compile(f"[{chars}]{{{FRAGMENT},}}" if chars else "(?!)")

    return _latest(_stretch_patterns, grams, made, 2 * _KEPT_RUNS)


def _merged(spans: list[list[int]]) -> list[list[int]]:
    """``spans`` in order, those that overlap or touch as one."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


#: The runs of the secrets of the latest masks, by those secrets, the latest ``_KEPT_RUNS``
#: sets of them: the same for every error until a client comes or goes, or a token is
#: replaced. More than one: a lazy customer's malformed field masks the secrets its walk's
#: pages were read with beside the live clients', and the error it raises the live ones
#: alone; with the latest set alone kept, each such read made the runs of every remembered
#: secret again (256 of them: 2.4M instructions a read).
_latest_runs: dict[frozenset[str], frozenset[str]] = {}
_KEPT_RUNS = 4

_Key = TypeVar("_Key")
_Made = TypeVar("_Made")


def _latest(cache: dict[_Key, _Made], key: _Key, make: Callable[[], _Made], kept: int) -> _Made:
    """``cache[key]``, made by ``make`` if it is not there, the latest ``kept`` alone kept."""
    made = cache.get(key)
    if made is None:
        made = cache[key] = make()
        for old in list(cache)[:-kept]:  # the oldest; a list: other threads
            cache.pop(old, None)
    return made


def _runs(masks: list[_Masks]) -> frozenset[str]:
    """The runs (in lower case) of the secrets of ``masks``, all of them."""
    secrets = frozenset(mask.secret for mask in masks)
    return _latest(
        _latest_runs, secrets, lambda: frozenset().union(*(mask.runs for mask in masks)), _KEPT_RUNS
    )


#: The runs of the secrets of the latest masks as written (not lower-cased), by those secrets,
#: as :data:`_latest_runs`: made again for each text holding an "İ", every form's runs of every
#: secret in use took 480 ms an error for 255 of them (a Turkish customer's name quoted).
_latest_raw_runs: dict[frozenset[str], frozenset[str]] = {}


def _raw_runs(masks: list[_Masks]) -> frozenset[str]:
    """The runs (as written) of the secrets of ``masks``, all of them."""
    secrets = frozenset(mask.secret for mask in masks)
    return _latest(
        _latest_raw_runs,
        secrets,
        lambda: frozenset().union(*(_fragments(form) for mask in masks for form in mask.forms)),
        _KEPT_RUNS,
    )


def _forms(secret: str) -> tuple[str, ...]:
    """``secret`` and the ways a URL encodes it, whose runs are masked alike: a value quoted
    URL-encoded and cut short (``Cn4ry%2BS3cr3t%2FZq9...``) held no run of the raw secret."""
    forms = {secret}
    for said in _in_cases(secret):
        with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate: never sent, see below
            forms.update(quote(said, safe=safe) for safe in ("", "/", "/?:@!$'()*,"))
            forms.add(quote_plus(said))
            forms.add(_in_query(said))
        forms.update(_in_json(said))
    forms.update(_in_page(secret))
    return tuple(forms)


def _in_cases(text: str) -> set[str]:
    """``text`` as written, and upper- and lower-cased where it holds a letter outside ASCII:
    a pattern ignoring case takes "С" for "с", but not "\\u0421" for "\\u0441" nor "%D0%A1" for
    "%D1%81", and a secret of such letters quoted escaped in another case was shown whole."""
    return {text} if text.isascii() else {text, text.upper(), text.lower()}


def _in_page(secret: str) -> set[str]:
    """``secret`` as a page may escape it (see :func:`_secret_pattern`): as html.escape and
    PHP's htmlspecialchars write it (``&quot;``, ``&#x27;`` or ``&#039;`` or ``&apos;``), and
    with each ASCII character but letters, digits and ``-._~`` as an entity of its code, hex
    (beside the named ones, as OWASP's encoder) or decimal. Quoted so and cut short, all of it
    but its raw runs was shown (``Cn4ry&#x2F;S3cr3t&#x27;Zq``: 15 of its 20 characters)."""
    if _NEVER_ENCODED.fullmatch(secret):
        return set()
    named = html.escape(secret)
    return {
        named,
        named.replace("&#x27;", "&#039;"),
        named.replace("&#x27;", "&apos;"),
        "".join(_entity(char, "&#x{:x};") for char in secret),
        "".join(
            html.escape(char) if char in '&<>"' else _entity(char, "&#x{:x};") for char in secret
        ),
        "".join(_entity(char, "&#{};") for char in secret),
    }


def _entity(char: str, written: str) -> str:
    """``char`` as ``written`` (``"&#x{:x};"``) of its code, if a page may so escape it."""
    if _NEVER_ENCODED.match(char) or not (char.isascii() and char.isprintable()):
        return char
    return written.format(ord(char))


def _in_json(text: str) -> set[str]:
    """``text`` as a JSON writer may put it in a string: non-ASCII as ``\\u00e9`` (Python's
    and Java's default), ``/`` as ``\\/`` (PHP's ``json_encode``), and any character but
    letters, digits and ``-._~`` as ``\\u00XX`` (.NET's ``System.Text.Json`` writes ``+`` as
    ``\\u002B``, Go ``&<>`` as ``\\u0026``...). A service echoing a secret in its JSON body
    so, the error's ``body`` kept it whole: no raw or URL-encoded form of it was there to
    match (``\\u002B`` as well, and its runs, with ``\\u00e9`` and ``\\/`` alone)."""
    written = json.dumps(text)[1:-1]
    every = "".join(map(_json_escaped, text))
    once = {written, written.replace("/", "\\/"), every}
    # Some of those characters escaped and not the others, as each writer picks its own
    # (.NET's "+" with "/" raw, Gson's "=" with "+" raw): cut short, a run of 8 characters
    # holding one raw and one escaped matched neither form, and was shown. Each set of them,
    # for a secret of up to 4 kinds (base64's "+/=": 6 more forms); past that, all or none.
    kinds = sorted({char for char in text if char.isascii() and _json_escaped(char) != char})
    if len(kinds) <= _MOST_KINDS_ESCAPED_APART:
        for size in range(1, len(kinds)):
            for escaped in itertools.combinations(kinds, size):
                once.add(
                    "".join(_json_escaped(c) if c in escaped else json.dumps(c)[1:-1] for c in text)
                )
    # And escaped twice, a JSON body quoted in a JSON string ("\\/", "\\u00e9"; "\\\/" by PHP):
    # the secret was masked in its runs alone, its start and end shown, or not at all.
    twice = {json.dumps(form)[1:-1] for form in once}
    return once | twice | {form.replace("/", "\\/") for form in twice}


#: The most kinds of characters a secret may hold for :func:`_in_json` to give a form of each
#: set of them escaped: 2 to the power of it forms, and as many again escaped twice.
_MOST_KINDS_ESCAPED_APART = 4


def _json_escaped(char: str) -> str:
    """``char`` as a JSON writer escaping every character it may escape writes it."""
    if _NEVER_ENCODED.match(char):
        return char
    return f"\\u{ord(char):04x}" if char.isascii() else json.dumps(char)[1:-1]


def _in_query(secret: str) -> str:
    """``secret`` as yarl writes it in a query, as aiohttp sends it: a space as ``+`` beside
    the ``(`` that quote_plus encodes (``0( 00000000`` went out as ``0(+00000000``, whose runs
    neither of the other forms holds)."""
    from yarl import URL

    return URL("http://h/").with_query({"q": secret}).raw_query_string.partition("=")[2]


def _fragments(secret: str) -> frozenset[str]:
    return frozenset(secret[i : i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1))


#: The characters outside ASCII that a pattern's IGNORECASE takes for ASCII letters ("ı" and
#: "İ" for "i", "ſ" for "s", the Kelvin sign for "k"), as those: what an anchor is looked for in.
_LIKE_ASCII = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}


def _like_ascii(text: str) -> str:
    """``text`` with the letters of :data:`_LIKE_ASCII` as their ASCII ones: one fast scan for
    each (``str.translate`` looked every character up in a dict: 0.6 ms on an error of 4 KB in
    Chinese, a third more than all its masking, for letters it held none of)."""
    for odd, plain in _LIKE_ASCII.items():
        text = text.replace(odd, plain)
    return text


#: The characters URL encoding never changes: a pattern matches them as they are.
_NEVER_ENCODED = re.compile(r"[A-Za-z0-9._~-]+")


def _anchor(secret: str) -> str:
    """The longest run of ``secret``'s characters that URL encoding never changes, in lower
    case: a text its pattern matches holds it (folded by ``_LIKE_ASCII``, lower-cased); ""
    (found in any text) when it has none."""
    return max(_NEVER_ENCODED.findall(secret), key=len, default="").lower()


#: A run of two backslashes or more, or any one character: what :func:`_secret_pattern` matches
#: as one.
_BACKSLASHES_OR_ONE = re.compile(r"\\{2,}|.", re.DOTALL)


def _secret_pattern(secret: str) -> re.Pattern[str]:
    """Matches ``secret`` with each character that URL encoding, a JSON string's escapes, or a
    page's (an entity of its code), may change either way. A run of backslashes in one form
    throughout: each backslash matched 1, 2 or 4 of a text's (raw, JSON-escaped once or
    twice), and a text's run one short of the secret's was split every way before the scan
    moved on, in time growing 1.6-fold a backslash (a secret of 40: minutes on 40 of them)."""
    parts = []
    for same in _BACKSLASHES_OR_ONE.finditer(secret):
        char, times = same.group()[0], len(same.group())
        if char.isascii() and (char.isalnum() or char in "-._~"):
            parts.append(re.escape(char))  # never encoded
            continue
        forms = {re.escape(char)}
        # An undecodable byte from the environment arrives as a lone surrogate; other lone
        # surrogates cannot be sent in a URL at all.
        with contextlib.suppress(UnicodeEncodeError):
            forms.add(re.escape(quote(char, safe="", errors="surrogateescape")))
        if char == " ":
            forms.add(r"\+")
        for said in _in_cases(char) - {char}:  # "ä" upper-cased: "%C3%84" (JSON: below)
            with contextlib.suppress(UnicodeEncodeError):
                forms.add(re.escape(quote(said, safe="", errors="surrogateescape")))
        for said in _in_cases(char):
            forms.update(map(re.escape, _in_json(said)))
        if char.isascii() and char.isprintable():  # as a page escapes it: "&#x2F;", "&#39;"
            forms.add(re.escape(html.escape(char)))
            # Its code with zeros before it too: PHP's htmlspecialchars writes "'" as "&#039;".
            forms.add(rf"&\#(?:x0*{ord(char):x}|0*{ord(char)});")
            if char == "'":
                forms.add("&apos;")  # HTML5's and XML's
        ordered = sorted(forms, key=len, reverse=True)  # longest first
        if times > 1:
            ordered = [f"(?:{form}){{{times}}}" for form in ordered]
        parts.append("(?:" + "|".join(ordered) + ")")
    # Case-insensitive for the hex digits of %2b/%2B; masking a case variant too is harmless.
    return re.compile("".join(parts), re.IGNORECASE)


class RedactedCause(Exception):
    """Stands in for a third-party exception (aiohttp's carry the URL) in a ``__cause__`` chain."""

    def __init__(self, err: BaseException, secrets: Iterable[str | None] = ()) -> None:
        self.original_type = f"{type(err).__module__}.{type(err).__qualname__}"
        super().__init__(f"{type(err).__name__}: {redact(str(err), secrets)}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own pickling (and copying) calls the class with its message, which
        # __init__ took for the error it stands in for: "str: ClientConnectionError: ..." came
        # back where a chain was carried to another process (tblib) or copied.
        return _cause_as_pickled, (self.args, self.__dict__)


def _cause_as_pickled(args: tuple[Any, ...], state: dict[str, Any]) -> RedactedCause:
    """A :class:`RedactedCause` as pickled: its message and type, as they were."""
    cause = RedactedCause.__new__(RedactedCause)
    cause.args = args
    cause.__dict__.update(state)
    return cause
