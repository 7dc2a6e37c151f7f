"""Rater identity: name normalisation, confusable-name skeletons, secret rater tokens, and signed-in names.

A typed name is claimed by its first vote, which returns a secret `rater_token`; the store keeps only its
sha256, and every later vote or undo under that name must present the token. Names are compared after
NFKC + casefold; a new name whose *skeleton* (homoglyphs mapped to Latin, marks and invisible characters
dropped) equals a claimed one is refused. `hf:` names come only from Hugging Face sign-in (`signed_in`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass

MAX_RATER_NAME = 64  # longest rater name after normalisation: the one limit for typed names
SIGNED_IN_PREFIX = "hf:"
MAX_HF_USER = 96  # longest Hugging Face username (_HF_USER_RE)
# longest rater name the store keeps: a typed name (<= MAX_RATER_NAME) or "hf:" + a username (99)
MAX_STORED_RATER = max(MAX_RATER_NAME, len(SIGNED_IN_PREFIX) + MAX_HF_USER)
TOKEN_BYTES = 24  # secrets.token_urlsafe(24): 32 characters, 192 bits
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")  # what a presented token may look like
# use fullmatch: "$" allows a trailing "\n"
_HF_USER_RE = re.compile(rf"[A-Za-z0-9](?:[A-Za-z0-9._-]{{0,{MAX_HF_USER - 2}}}[A-Za-z0-9])?")
# Unicode categories refused outright in a name: control, surrogate, private use, unassigned, line/paragraph
# separators (format characters such as zero-width spaces are stripped instead)
_REFUSED = {"Cc", "Cs", "Co", "Cn", "Zl", "Zp"}

# Letters that render like a Latin letter in common fonts (after casefolding), mapped to it. Not the full
# Unicode confusables table: the Cyrillic, Greek and Latin look-alikes a person would use to pass as someone.
_HOMOGLYPHS = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "ь": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "н": "h", "і": "l",
    "ї": "l", "ј": "j", "к": "k", "ӏ": "l", "м": "m", "п": "n", "о": "o", "р": "p", "ԛ": "q", "г": "r",
    "ѕ": "s", "т": "t", "у": "y", "ү": "y", "х": "x", "ԝ": "w", "ѡ": "w",
    # Greek
    "α": "a", "β": "b", "ϲ": "c", "ε": "e", "η": "n", "ι": "l", "κ": "k", "μ": "u", "ν": "v", "ο": "o",
    "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "γ": "y",
    # Latin and digits: i, l, 1 and I pass for each other in a sans-serif UI font (so do 0 and o)
    "ı": "l", "i": "l", "1": "l", "|": "l", "ǀ": "l", "0": "o",
})
_DIGRAPHS = (("rn", "m"), ("vv", "w"))


@dataclass(frozen=True)
class Rater:
    """Who is voting: a normalised name, the token they presented (typed names), whether it came from sign-in."""

    name: str
    token: str | None = None
    signed_in: bool = False

    def __repr__(self) -> str:  # never print a token into a log
        return f"Rater({self.name!r}, signed_in={self.signed_in}, token={'yes' if self.token else 'no'})"


def _fold(text: str) -> str:
    """NFKC, format characters (zero-width and the like) dropped, whitespace collapsed, casefolded, NFKC again."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = " ".join(text.split())
    return unicodedata.normalize("NFKC", text.casefold())


def normalise_name(name) -> str:
    """The canonical form of a typed rater name; ValueError for empty, over-long, control or `hf:` names."""
    if not isinstance(name, str):
        raise ValueError(f"a rater name must be text, got {type(name).__name__}")
    if len(name) > 4 * MAX_RATER_NAME:  # before NFKC, which can expand a character up to 18-fold
        raise ValueError(f"name too long (at most {MAX_RATER_NAME} characters)")
    bad = sorted({unicodedata.category(c) for c in name} & _REFUSED)
    if bad:
        raise ValueError("a name must not contain control, private-use, unassigned or line-break characters")
    folded = _fold(name)
    if not folded:
        raise ValueError("enter a name (letters or digits) before rating")
    if len(folded) > MAX_RATER_NAME:
        raise ValueError(f"name too long (at most {MAX_RATER_NAME} characters)")
    if folded.startswith(SIGNED_IN_PREFIX) or skeleton(folded).startswith(SIGNED_IN_PREFIX):
        raise ValueError(f"names starting with {SIGNED_IN_PREFIX!r} come only from signing in with Hugging Face")
    return folded


def skeleton(name: str) -> str:
    """A key equal for names that look alike: folded, accents and marks dropped, homoglyphs mapped to Latin."""
    text = unicodedata.normalize("NFD", _fold(name))
    text = "".join(c for c in text if unicodedata.category(c) not in ("Mn", "Me"))
    text = text.translate(_HOMOGLYPHS)
    for pair, single in _DIGRAPHS:
        text = text.replace(pair, single)
    return text


def typed(name, token: str | None = None) -> Rater:
    """A rater from a typed name and the token their browser holds (None before their first vote)."""
    if token is not None and not isinstance(token, str):
        raise ValueError("rater_token must be text")
    return Rater(normalise_name(name), token or None, signed_in=False)


def signed_in(username: str) -> Rater:
    """A rater verified by Hugging Face sign-in (pass only `gr.OAuthProfile.username`, never request input)."""
    if not isinstance(username, str) or not _HF_USER_RE.fullmatch(username):
        raise ValueError(f"not a Hugging Face username: {str(username)[:100]!r}")
    return Rater(SIGNED_IN_PREFIX + username, None, signed_in=True)


def anonymous_name() -> str:
    """A fresh random name for a rater who gave none (open rating): claimed by its first vote like any other."""
    return f"anon-{secrets.token_hex(5)}"


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    """What the store keeps: tokens are random, so a plain sha256 is enough to make a stolen database useless."""
    return hashlib.sha256(token.encode()).hexdigest()


def well_formed_token(token) -> bool:
    return isinstance(token, str) and bool(_TOKEN_RE.fullmatch(token))


def token_matches(token: str | None, stored_hash: str) -> bool:
    if not well_formed_token(token):
        return False
    return hmac.compare_digest(token_hash(token), stored_hash)
