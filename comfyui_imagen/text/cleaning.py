"""Prompt preprocessing as DeepFloyd IF does it, without BeautifulSoup or ftfy.

IF's pipeline (diffusers ``IFPipeline._text_preprocessing``) lower-cases and strips every prompt; with
``clean_caption=True`` it runs its caption cleaner twice instead: URL, HTML, @nickname, CJK, id-number and
"free shipping" removal, dash and quote normalisation, whitespace collapse -- the clean-up its training captions got.
Here BeautifulSoup's ``.text`` is a tag-stripping regex plus ``html.unescape``, and ``ftfy.fix_text`` is Unicode NFKC
normalisation (fullwidth forms, ligatures) plus control-character removal; ftfy's mojibake repair has no stand-in.
"""
from __future__ import annotations

import html
import re
import unicodedata
import urllib.parse as ul
from typing import Literal

from .errors import TextEncoderError

Preprocess = Literal["none", "lower", "clean"]
PREPROCESS_MODES = ("none", "lower", "clean")

_URL_TLDS = r"(?:com|co|ru|net|org|edu|gov|it)"
_DASHES = ("\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0"
           "\uFE31\uFE32\uFE58\uFE63\uFF0D")
_FILE_EXTS = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
_BAD_PUNCT = r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\/\*]+"

# (pattern, replacement) applied in order: IF's rules up to its HTML step ...
_URLS = [
    (r"<person>", "person"),
    (r"\b((?:https?:(?:/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]" + _URL_TLDS + r"[\w/-]*\b/?(?!@)))", ""),
    (r"\b((?:www:(?:/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]" + _URL_TLDS + r"[\w/-]*\b/?(?!@)))", ""),
]
# ... after it, up to the Unicode repair ...
_BEFORE_REPAIR = [
    (r"@[\w\d]+\b", ""),                                        # @nickname
    (r"[\u31c0-\u31ef\u31f0-\u31ff\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4dc0-\u4dff\u4e00-\u9fff]+", ""),  # CJK
    ("[" + _DASHES + "]+", "-"),                                # every kind of dash
    (r"[`´«»“”¨]", '"'),
    (r"[‘’]", "'"),
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),               # IP addresses
    (r"\d:\d\d\s+$", ""),                                       # article ids
    (r"\\n", " "),                                              # literal backslash-n
    (r"#\d{1,3}\b", ""),
    (r"#\d{5,}\b", ""),
    (r"\b\d{6,}\b", ""),
    (r"[\S]+\." + _FILE_EXTS, ""),                              # file names
    (r"[\"']{2,}", '"'),
    (r"[\.]{2,}", " "),
    (_BAD_PUNCT, " "),                                          # ***SALE***, #tag, (x), a/b
    (r"\s+\.\s+", " "),
]
# ... and after the repair
_AFTER_REPAIR = [
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),                         # jc6640
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),                         # jc6640vc
    (r"\b\d+[a-zA-Z]+\d+\b", ""),                               # 6640vc231
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (r"\b" + _FILE_EXTS + r"(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),       # j2d1a2a...
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),                       # 1920x1080
    (r"\b\s+\:\s+", ": "),
    (r"(\D[,\./])\b", r"\1 "),
    (r"\s+", " "),
]
_EDGES = [
    (r"^[\"']([\w\W]+)[\"']$", r"\1"),                          # surrounding quotes
    (r"^['_,\-:;]", ""),
    (r"['_,\-:\-+]$", ""),
    (r"^\.\S+$", ""),
]


def _apply(rules, text: str) -> str:
    for pattern, replacement in rules:
        text = re.sub(pattern, replacement, text)
    return text


def _repair_unicode(text: str) -> str:
    """ftfy stand-in: NFKC (fullwidth letters, ligatures), no control characters, entities decoded twice."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    return html.unescape(html.unescape(text))


def clean_caption_once(caption: str) -> str:
    caption = ul.unquote_plus(str(caption)).strip().lower()
    caption = _apply(_URLS, caption)
    caption = html.unescape(re.sub(r"<[^<>]*>", "", caption))   # BeautifulSoup(...).text: tags out, entities decoded
    caption = _apply(_BEFORE_REPAIR, caption)
    if len(re.findall(r"[-_]", caption)) > 3:                   # this-is-my-cute-cat -> words
        caption = re.sub(r"[-_]", " ", caption)
    caption = _repair_unicode(caption)
    caption = _apply(_AFTER_REPAIR, caption)
    return _apply(_EDGES, caption).strip()


def clean_caption(caption: str) -> str:
    """IF's caption cleaner (run twice, as IF's pipeline does)."""
    return clean_caption_once(clean_caption_once(caption))


def preprocess(text: str, mode: Preprocess = "lower") -> str:
    """"none": as typed; "lower": lower-case and strip (IF's default); "clean": IF's ``clean_caption=True``."""
    if mode == "none":
        return text
    if mode == "lower":
        return text.lower().strip()
    if mode == "clean":
        return clean_caption(text)
    raise TextEncoderError(f"unknown prompt preprocessing {mode!r}; expected one of {PREPROCESS_MODES}")
