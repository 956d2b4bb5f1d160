"""Typed readers for parsed JSON documents that refuse with the exact JSON path of what is wrong.

A foreign document (an A2A card, an MCP server.json) is checked while it is read, so that the caller learns
`card.skills[2].tags[0]` rather than a capreg field it never wrote. The readers also turn foreign values
into values capreg's validation accepts (names, semantic versions, tags and modes), refusing at the path
where that cannot be done deterministically."""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

from registry.domain.errors import InvalidArgument
from registry.domain.validation import MAX_VERSION, NAME_RE, PRINTABLE_RE, SEMVER_RE

MAX_TITLE = 200  # a human name or title that capreg puts in front of a description
MAX_TAG_LEN = 64  # check_tokens' default
MAX_NAME_LEN = 128  # NAME_RE
MAX_RAW_NAME = 1024  # a foreign name or id before it is made a capreg name; bounds the work and the echo

T = TypeVar("T")

_IDENTIFIER_RE = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*\Z")
_SPACES_RE = re.compile(r"\s+")
_NOT_NAME_CHARS_RE = re.compile(r"[^A-Za-z0-9._:/@-]+")
_LEADING_PUNCTUATION_RE = re.compile(r"^[^A-Za-z0-9]+")
_NOT_SLUG_CHARS_RE = re.compile(r"[^a-z0-9_]+")
_LOOSE_VERSION_RE = re.compile(r"^[vV]?(\d{1,18})(?:\.(\d{1,18}))?(?:\.(\d{1,18}))?\Z")


def child(path: str, key: str) -> str:
    """`path.key`, or `path["key"]` for a key that is not an identifier (an _meta key with dots and a slash)."""
    return f"{path}.{key}" if _IDENTIFIER_RE.match(key) else f"{path}[{json.dumps(key)}]"


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def shown(value: str, limit: int = 64) -> str:
    """`value` quoted for a message, cut short: errors travel in gRPC trailers, so echo no unbounded input."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def kind_of(value: object) -> str:
    """What a JSON value is, in the words a message uses."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value.strip() else "a blank string" if value else "an empty string"
    if isinstance(value, Mapping):
        return "an object"
    if is_array(value):
        return "an array"
    return type(value).__name__


def is_array(value: object) -> TypeGuard[Sequence[Any]]:
    """A JSON array (a string is a sequence too, but not an array)."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray)


def as_object(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidArgument(path, f"must be an object, got {kind_of(value)}")
    return value


def as_array(value: object, path: str, max_items: int, *, min_items: int = 0) -> Sequence[Any]:
    if not is_array(value):
        raise InvalidArgument(path, f"must be an array, got {kind_of(value)}")
    if len(value) > max_items:
        raise InvalidArgument(path, f"has {len(value)} items; the limit is {max_items}")
    if len(value) < min_items:
        raise InvalidArgument(path, f"has {len(value)} items; at least {min_items} expected")
    return value


def as_string(value: object, path: str, max_len: int) -> str:
    """A non-blank string of at most `max_len` characters without NUL."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(path, f"must be a non-empty string, got {kind_of(value)}")
    if len(value) > max_len:
        raise InvalidArgument(path, f"is {len(value)} characters long; the limit is {max_len}")
    if "\x00" in value:
        raise InvalidArgument(path, "must not contain NUL characters")
    return value


def as_token(value: object, path: str, max_len: int) -> str:
    """A tag or a MIME type: whitespace runs become one space and the ends are trimmed, so that
    "  currency \t rates " is accepted as "currency rates"; other control characters are refused."""
    if not isinstance(value, str):
        raise InvalidArgument(path, f"must be a string, got {kind_of(value)}")
    token = _SPACES_RE.sub(" ", value).strip()
    if len(token) > max_len:
        raise InvalidArgument(path, f"is {len(token)} characters long; the limit is {max_len}")
    if not token or not PRINTABLE_RE.match(token):
        raise InvalidArgument(path, f"must be 1-{max_len} printable characters, got {shown(value)}")
    return token


def as_objects(value: object, path: str, max_items: int, *, min_items: int = 0) -> tuple[Node, ...]:
    items = as_array(value, path, max_items, min_items=min_items)
    return tuple(Node(item(path, i), as_object(v, item(path, i))) for i, v in enumerate(items))


def as_tokens(value: object, path: str, max_items: int, max_len: int) -> tuple[str, ...]:
    items = as_array(value, path, max_items)
    return tuple(as_token(v, item(path, i), max_len) for i, v in enumerate(items))


def as_texts(value: object, path: str, max_items: int, max_len: int) -> tuple[str, ...]:
    items = as_array(value, path, max_items)
    return tuple(as_string(v, item(path, i), max_len) for i, v in enumerate(items))


@dataclass(frozen=True, slots=True)
class Node:
    """A JSON object and the path it was found at. Optional members that are null count as absent, since
    many JSON writers emit null for an unset field; required ones must be present and of the right type."""

    path: str
    data: Mapping[str, Any]

    @staticmethod
    def root(document: object, name: str) -> Node:
        return Node(name, as_object(document, name))

    def at(self, key: str) -> str:
        return child(self.path, key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def _required(self, key: str, expected: str, hint: str) -> Any:
        if key not in self.data:
            raise InvalidArgument(self.at(key), f"is missing; expected {expected}{hint}")
        return self.data[key]

    def string(self, key: str, max_len: int, *, hint: str = "") -> str:
        expected = f"a non-empty string of at most {max_len} characters"
        return as_string(self._required(key, expected, hint), self.at(key), max_len)

    def opt_string(self, key: str, max_len: int) -> str | None:
        return as_string(self.data[key], self.at(key), max_len) if self.has(key) else None

    def choice(self, key: str, options: Collection[str]) -> str:
        allowed = ", ".join(repr(o) for o in options)
        value = self._required(key, f"one of {allowed}", "")
        if value not in options:
            got = shown(value) if isinstance(value, str) else kind_of(value)
            raise InvalidArgument(self.at(key), f"must be one of {allowed}, got {got}")
        assert isinstance(value, str)
        return value

    def obj(self, key: str) -> Node:
        return Node(self.at(key), as_object(self._required(key, "an object", ""), self.at(key)))

    def opt_obj(self, key: str) -> Node | None:
        return Node(self.at(key), as_object(self.data[key], self.at(key))) if self.has(key) else None

    def objs(self, key: str, max_items: int, *, min_items: int = 0) -> tuple[Node, ...]:
        value = self._required(key, f"an array of at most {max_items} objects", "")
        return as_objects(value, self.at(key), max_items, min_items=min_items)

    def opt_objs(self, key: str, max_items: int) -> tuple[Node, ...]:
        return as_objects(self.data[key], self.at(key), max_items) if self.has(key) else ()

    def tokens(self, key: str, max_items: int, max_len: int) -> tuple[str, ...]:
        value = self._required(key, f"an array of at most {max_items} strings", "")
        return as_tokens(value, self.at(key), max_items, max_len)

    def opt_tokens(self, key: str, max_items: int, max_len: int) -> tuple[str, ...] | None:
        return as_tokens(self.data[key], self.at(key), max_items, max_len) if self.has(key) else None

    def opt_texts(self, key: str, max_items: int, max_len: int) -> tuple[str, ...]:
        return as_texts(self.data[key], self.at(key), max_items, max_len) if self.has(key) else ()


def _ascii(value: str) -> str:
    """Accents dropped ("Café" -> "Cafe"), so that a name keeps its letters; other non-ASCII goes."""
    return unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode("ascii")


def capability_name(value: str, path: str) -> str:
    """A capreg capability name for a foreign id: kept when valid; else every run of characters capreg does
    not allow becomes "-" and leading punctuation goes ("get rates!" -> "get-rates", "_ping" -> "ping")."""
    if NAME_RE.match(value):
        return value
    name = _NOT_NAME_CHARS_RE.sub("-", _ascii(value))
    name = _LEADING_PUNCTUATION_RE.sub("", name).rstrip("-")
    return _checked_name(name, value, path)


def agent_name(value: str, path: str) -> str:
    """A capreg agent name for a foreign name: lower case, and every run of characters other than a-z, 0-9
    and "_" becomes "-" ("Currency Agent" -> "currency-agent", "io.github.acme/weather" ->
    "io-github-acme-weather"). Different foreign names can meet in one capreg name; the registry's usual
    name uniqueness then applies."""
    name = _NOT_SLUG_CHARS_RE.sub("-", _ascii(value).lower()).strip("-_")
    return _checked_name(name, value, path)


def _checked_name(name: str, value: str, path: str) -> str:
    if not name:
        raise InvalidArgument(path, f"{shown(value)} has no ASCII letters or digits to make a capreg name from")
    if len(name) > MAX_NAME_LEN:
        raise InvalidArgument(
            path, f"would make a capreg name of {len(name)} characters from {shown(value)}; the limit is {MAX_NAME_LEN}"
        )
    return name


def semver(value: str, path: str) -> str:
    """A semantic version for capreg: kept when it is one; "1", "1.2", "v1.2.3" and "2025.01.07" are
    padded and unprefixed ("1.0.0", "1.2.0", "1.2.3", "2025.1.7"); anything else is refused."""
    if len(value) <= MAX_VERSION and SEMVER_RE.match(value):
        return value
    loose = _LOOSE_VERSION_RE.match(value)
    if loose is None:
        raise InvalidArgument(
            path, f"{shown(value)} is not a semantic version such as 1.2.0 (1, 1.2 and v1.2.3 are also accepted)"
        )
    return ".".join(str(int(part or 0)) for part in loose.groups())


def optional(read: Callable[..., T], *args: object) -> T | None:
    """`read(*args)`, or None where it refuses: export reads a stored source leniently."""
    try:
        return read(*args)
    except InvalidArgument:
        return None


def headed(head: str | None, body: str, path: str, max_len: int) -> str:
    """`head: body` (or `body` without a head): capreg keeps one description, so a human name or title
    that would otherwise be lost goes in front of it."""
    if not head:
        return body
    text = f"{head}: {body}"
    if len(text) > max_len:
        raise InvalidArgument(
            path, f"is {len(text)} characters long with {shown(head + ': ')} in front of it; the limit is {max_len}"
        )
    return text


def unheaded(text: str, head: str | None) -> str | None:
    """The body of a `head: body` description, or None when `text` does not start with that head."""
    if head and text.startswith(f"{head}: ") and len(text) > len(head) + 2:
        return text[len(head) + 2 :]
    return None
