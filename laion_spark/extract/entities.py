"""HTML character references in attribute values, decoded exactly once, as HTML5 does.

The rule of the extract stage: an `alt`, `src` or `<base href>` value is decoded once, from
the HTML source, and never again. On the WARC path the HTML parser (lexbor) does it; on the
WAT path it depends on who wrote the WAT:

* Common Crawl's own WAT generator (its fork of ia-web-commons, `Software-Info:
  ia-web-commons.…`) decodes attribute values itself since CC-MAIN-2019-26
  (commoncrawl/ia-web-commons issues #14 and #19: jsoup's `Parser.unescapeEntities(value,
  inAttribute=true)`, the HTML5 attribute rules). Its values are used as they are.
* The webarchive-commons release on Maven Central and Common Crawl's WATs before 2019-26
  keep values as written in the HTML: `unescape_attribute` decodes them here, with the same
  HTML5 rules lexbor applies, so a page gives the same pairs from its WARC and its WAT.

`extract.wat_entities` (auto | decoded | raw) picks the rule; `auto` reads the WAT's
warcinfo record (`wat_values_decoded`).
"""

from __future__ import annotations

import re
from html.entities import html5 as _HTML5

WAT_ENTITIES = ("auto", "decoded", "raw")

# a reference starts with '&' then '#' or an ASCII letter/digit; anything else is literal
_REF = re.compile(r"&(?:#[xX]([0-9A-Fa-f]+)|#([0-9]+)|([A-Za-z0-9]+))(;?)")
# the longest name of the HTML5 table (with its ';')
_MAX_NAME = max(len(k) for k in _HTML5)
# numeric references 0x80-0x9F name windows-1252 characters (HTML5 §13.2.5.80); the five
# code points that windows-1252 leaves undefined stay themselves
_C1 = {}
for _n in range(0x80, 0xA0):
    try:
        _C1[_n] = bytes([_n]).decode("cp1252")
    except UnicodeDecodeError:
        pass


def _numeric(code: int) -> str:
    if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return "\ufffd"
    return _C1.get(code) or chr(code)


def _replace(m: re.Match) -> str:
    hexa, dec, name, semi = m.group(1), m.group(2), m.group(3), m.group(4)
    if hexa is not None or dec is not None:
        digits, base = (hexa, 16) if hexa is not None else (dec, 10)
        # past 8 significant digits it is past U+10FFFF anyway (and int() of a huge decimal
        # string would raise)
        return _numeric(int(digits, base) if len(digits.lstrip("0")) <= 8 else 0x110000)
    if semi and len(name) < _MAX_NAME and name + ";" in _HTML5:
        return _HTML5[name + ";"]
    # the longest prefix that is a name of the table; names without ';' are the legacy
    # ones (&amp, &copy, ...). In an attribute, a legacy name followed by '=' or an ASCII
    # letter/digit stays as written (HTML5: "for historical reasons")
    for k in range(min(len(name), _MAX_NAME), 1, -1):
        if name[:k] in _HTML5:
            if k < len(name):
                return m.group(0)  # followed by a letter or digit
            after = m.string[m.end() : m.end() + 1] if not semi else ";"
            if after == "=":
                return m.group(0)
            return _HTML5[name] + semi
    return m.group(0)


def unescape_attribute(value: str) -> str:
    """An attribute value as written in HTML -> its value, decoded as an HTML5 parser
    decodes attribute values (lexbor, html5lib, browsers): `&amp;` `&#39;` `&#x27;`, legacy
    names without ';' unless '=' or a letter/digit follows (`?a=1&copy=2` stays), numeric
    references of controls 0x80-0x9F as windows-1252, invalid ones as U+FFFD."""
    if "&" not in value:
        return value
    return _REF.sub(_replace, value)


_SOFTWARE = re.compile(r"^Software-Info:\s*(\S+)", re.M | re.I)
_CC_FILE = re.compile(r"CC-MAIN-(\d{14})-")
_CC_CRAWL = re.compile(r"CC-MAIN-(\d{4})-(\d{2})")
# Common Crawl's WAT generator decodes attribute values since the crawl of June 2019
_FIRST_DECODED_CRAWL = (2019, 26)
_FIRST_DECODED_SEGMENT = "20190601000000"


def wat_values_decoded(warcinfo: str | None, path: str) -> tuple[bool, str]:
    """(whether the WAT's attribute values are already decoded, why), for `auto`.

    Decoded: a WAT written by Common Crawl's generator (warcinfo `Software-Info:
    ia-web-commons…`, or no warcinfo) for a Common Crawl segment of CC-MAIN-2019-26 or later
    (the `CC-MAIN-<14-digit time>-` file name in the warcinfo's `WARC-Filename` or in the
    path, or a `CC-MAIN-YYYY-WW` crawl id in the path). Anything else is taken as raw (the
    webarchive-commons of Maven Central, older crawls, other writers)."""
    text = warcinfo or ""
    m = _SOFTWARE.search(text)
    software = m.group(1) if m else None
    if software is not None and not software.lower().startswith("ia-web-commons"):
        return False, f"raw: written by {software}"
    names = [text, path]
    for name in names:
        f = _CC_FILE.search(name)
        if f:
            ok = f.group(1) >= _FIRST_DECODED_SEGMENT
            return ok, (
                f"{'decoded' if ok else 'raw'}: Common Crawl segment {f.group(1)} "
                f"({'from' if ok else 'before'} CC-MAIN-2019-26)"
            )
    c = _CC_CRAWL.search(path)
    if c:
        ok = (int(c.group(1)), int(c.group(2))) >= _FIRST_DECODED_CRAWL
        return ok, f"{'decoded' if ok else 'raw'}: crawl {c.group(0)}"
    return False, "raw: not a Common Crawl WAT"
