"""Creative Commons license detection from a page's links (as LAION did)."""

from __future__ import annotations

import re

# creativecommons.org/licenses/by-sa/4.0/deed.an -> ("licenses", "by-sa", "4.0")
_CC = re.compile(
    r"creativecommons\.org/(licenses|publicdomain)/([a-z][a-z-]*)/?(\d+(?:\.\d+)?)?",
    re.IGNORECASE,
)
_KNOWN = {"by", "by-sa", "by-nd", "by-nc", "by-nc-sa", "by-nc-nd", "zero", "mark"}


def cc_license(url: str | None) -> str | None:
    """Short id (`cc-by-sa-4.0`, `cc0-1.0`, `pdm-1.0`) of a CC license URL, else None."""
    if not url or "creativecommons.org" not in url.lower():
        return None
    m = _CC.search(url)
    if not m:
        return None
    kind, name, version = m.group(1).lower(), m.group(2).lower(), m.group(3)
    if name not in _KNOWN:
        return None
    if name == "zero":
        return f"cc0-{version or '1.0'}"
    if name == "mark":
        return f"pdm-{version or '1.0'}"
    if kind != "licenses":
        return None
    return f"cc-{name}-{version}" if version else f"cc-{name}"


def page_license(links: list[tuple[str | None, str | None]]) -> str | None:
    """License of a page from its (href, rel) links: a rel="license" CC link wins,
    else the first CC license link anywhere on the page."""
    first = None
    for href, rel in links:
        lic = cc_license(href)
        if lic is None:
            continue
        if rel and "license" in rel.lower():
            return lic
        if first is None:
            first = lic
    return first
