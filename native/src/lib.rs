//! Compiled hot path of laion_spark's extract stage: one WAT JSON record -> image-text pairs.
//!
//! It does exactly what `laion_spark.extract.wat.parse_wat_json` followed by
//! `laion_spark.extract.pairs.page_pairs` do, for the common shapes only:
//! - a record whose JSON shape is anything unusual (a non-object link, a non-string field,
//!   a duplicate key, invalid UTF-8, ...) is handed back (`None`) and Python does it;
//! - per image, the rare cases call back into Python: alt texts with entities or non-ASCII
//!   characters (ftfy, Unicode rules), and URLs outside the plain shapes (urljoin, IDNA).
//!
//! Attribute values are decoded exactly once (laion_spark.extract.entities): not at all when
//! the WAT's writer already decoded them (`decoded`, Common Crawl since CC-MAIN-2019-26),
//! else here, as an HTML5 parser decodes attribute values. The page's HTTP status gets the
//! WARC path's rule (a known non-2xx status: `page_http_not_ok`, no pairs).
//!
//! `LanguageId` is fastText's lid.176 inference (lid.rs), bit-identical to the fastText
//! package's predict and about 5x faster per caption from Python.
//!
//! Python stays the reference: tests/test_extract_native.py runs both on the real Common
//! Crawl record, the benchmark file and fuzzed records and asserts identical output.
//!
//! `pdq_hash` is the download stage's perceptual hash without the GIL (pdq.rs).

mod caption;
mod lid;
mod pdq;

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use sha2::{Digest, Sha256};

// rejection reasons: the strings of laion_spark.extract.{urls,pairs} (captions: caption.rs)
use caption::{CAPTION_TOO_LONG, NO_ALT};
const EMPTY_URL: &str = "empty_url";
const URL_TOO_LONG: &str = "url_too_long";
const DATA_URL: &str = "data_url";
const JAVASCRIPT_URL: &str = "javascript_url";
const BAD_EXTENSION: &str = "bad_extension";
const DUPLICATE_IN_PAGE: &str = "duplicate_in_page";
const DUPLICATE_URL_IN_PAGE: &str = "duplicate_url_in_page";
const TOO_MANY_IMAGES: &str = "too_many_images";
const HTTP_NOT_OK: &str = "page_http_not_ok";

/// A JSON object and nothing else: serde's derived structs also accept arrays (fields by
/// position), where Python's `isinstance(x, dict)` would not.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Obj<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Obj)
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

type Str<'a> = Option<Cow<'a, str>>;
/// caption::CaptionTables::new's arguments, as wat_native.caption_tables builds them.
type CaptionTablesArg = (
    Vec<u8>,
    Vec<u8>,
    Vec<u32>,
    Vec<u32>,
    Vec<caption::SetSpec>,
    Vec<Vec<(u8, usize)>>,
);
/// A rejection reason: one of the constants above, or one Python returned.
type Reason = Cow<'static, str>;
/// What urls.base_parts / urls.page_origin / urls.resolve_base give for a page (Python).
type PageSetup = (
    Option<(String, String, String)>,
    Option<(String, String)>,
    String,
);

#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(rename = "Envelope", borrow)]
    envelope: Option<Obj<Envelope<'a>>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "WARC-Header-Metadata", borrow)]
    warc: Option<Obj<WarcHeader<'a>>>,
    #[serde(rename = "Payload-Metadata", borrow)]
    payload: Option<Obj<PayloadMeta<'a>>>,
}

#[derive(Deserialize)]
struct WarcHeader<'a> {
    #[serde(rename = "WARC-Target-URI", borrow)]
    target_uri: Str<'a>,
}

#[derive(Deserialize)]
struct PayloadMeta<'a> {
    #[serde(rename = "HTTP-Response-Metadata", borrow)]
    http: Option<Obj<HttpMeta<'a>>>,
}

#[derive(Deserialize)]
struct HttpMeta<'a> {
    #[serde(rename = "HTML-Metadata", borrow)]
    html: Option<Obj<HtmlMeta<'a>>>,
    #[serde(rename = "Response-Message", borrow)]
    response: Option<Obj<ResponseMessage<'a>>>,
}

#[derive(Deserialize)]
struct ResponseMessage<'a> {
    // a number here is a shape Python handles (the record goes back)
    #[serde(rename = "Status", borrow)]
    status: Str<'a>,
}

#[derive(Deserialize)]
struct HtmlMeta<'a> {
    #[serde(rename = "Head", borrow)]
    head: Option<Obj<Head<'a>>>,
    #[serde(rename = "Links", borrow)]
    links: Option<Vec<Obj<Link<'a>>>>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "Base", borrow)]
    base: Str<'a>,
    #[serde(rename = "Link", borrow)]
    link: Option<Vec<Obj<HeadLink<'a>>>>,
}

#[derive(Deserialize)]
struct HeadLink<'a> {
    #[serde(borrow)]
    url: Str<'a>,
    #[serde(borrow)]
    rel: Str<'a>,
}

#[derive(Deserialize)]
struct Link<'a> {
    #[serde(borrow)]
    path: Str<'a>,
    #[serde(borrow)]
    url: Str<'a>,
    #[serde(borrow)]
    alt: Str<'a>,
    #[serde(borrow)]
    rel: Str<'a>,
}

/// What parse_wat_json finds in a record (before any rule runs).
struct Page<'a> {
    url: Cow<'a, str>,
    images: Vec<(Str<'a>, Str<'a>)>,
    base: Str<'a>,
    lic_links: Vec<(Cow<'a, str>, Str<'a>)>,
}

enum Parsed<'a> {
    Fallback,
    NotHtml,
    Rejected(&'static str),
    Page(Page<'a>),
}

/// pairs.http_status_code of a string: exactly three ASCII digits, else None.
fn http_status_code(s: &str) -> Option<u16> {
    (s.len() == 3 && s.bytes().all(|c| c.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// urls.target_uri: a WARC-Target-URI without the angle brackets some writers put around it.
fn target_uri(u: Cow<'_, str>) -> Cow<'_, str> {
    let inner = u.len() >= 2 && u.starts_with('<') && u.ends_with('>');
    match u {
        Cow::Borrowed(b) if inner => Cow::Borrowed(&b[1..b.len() - 1]),
        Cow::Owned(o) if inner => Cow::Owned(o[1..o.len() - 1].to_string()),
        other => other,
    }
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let s = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Whether orjson may reject JSON that serde_json accepts, in the parts serde_json only skips
/// (unchecked): a number out of f64 range (a 300+ digit run, or an exponent of 3+ digits;
/// orjson: "infinity when parsed as double") or a `\u` escape of an unpaired surrogate.
/// Such records go to Python. Numbers are looked for outside strings only (ids and digests
/// inside strings look like numbers).
fn orjson_may_reject(b: &[u8]) -> bool {
    let mut i = 0;
    let mut run = 0usize;
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            // jump to the closing quote, past escaped characters
            i += 1;
            loop {
                match memchr::memchr2(b'"', b'\\', &b[i..]) {
                    None => return false, // unterminated: serde_json rejects the record
                    Some(k) if b[i + k] == b'\\' => {
                        i += k;
                        match b.get(i + 1) {
                            Some(b'u') => match hex4(b, i + 2) {
                                Some(0xD800..=0xDBFF) => {
                                    // a high surrogate must be followed by a low one
                                    let low = (b.get(i + 6) == Some(&b'\\')
                                        && b.get(i + 7) == Some(&b'u'))
                                    .then(|| hex4(b, i + 8))
                                    .flatten();
                                    if !matches!(low, Some(0xDC00..=0xDFFF)) {
                                        return true;
                                    }
                                    i += 12;
                                }
                                Some(0xDC00..=0xDFFF) => return true,
                                _ => i += 2,
                            },
                            _ => i += 2,
                        }
                    }
                    Some(k) => {
                        i += k + 1;
                        break;
                    }
                }
                if i >= b.len() {
                    return false;
                }
            }
            run = 0;
            continue;
        }
        if c.is_ascii_digit() {
            run += 1;
            if run >= 300 {
                return true;
            }
        } else {
            if run > 0 && (c == b'e' || c == b'E') {
                let mut j = i + 1;
                if matches!(b.get(j), Some(b'+' | b'-')) {
                    j += 1;
                }
                if b[j.min(b.len())..]
                    .iter()
                    .take_while(|d| d.is_ascii_digit())
                    .count()
                    >= 3
                {
                    return true;
                }
            }
            run = 0;
        }
        i += 1;
    }
    false
}

fn parse_record<'a>(text: &'a str, has_cc: bool, record_url: Option<&'a str>) -> Parsed<'a> {
    // Obj: a top-level array is bad_wat_shape in Python, not a Doc by position
    let doc: Doc<'a> = match serde_json::from_str::<Obj<Doc<'a>>>(text) {
        Ok(Obj(d)) => d,
        Err(_) => return Parsed::Fallback,
    };
    let Some(Obj(env)) = doc.envelope else {
        return Parsed::Fallback; // Python raises bad_wat_shape
    };
    let Some(Obj(http)) = env.payload.and_then(|p| p.0.http) else {
        return Parsed::NotHtml;
    };
    let Some(Obj(meta)) = http.html else {
        return Parsed::NotHtml;
    };
    // pairs.http_status_rejection, before anything else of the page (as wat.py)
    let status = http
        .response
        .and_then(|r| r.0.status)
        .and_then(|s| http_status_code(&s));
    if matches!(status, Some(c) if !(200..300).contains(&c)) {
        return Parsed::Rejected(HTTP_NOT_OK);
    }
    let uri = env
        .warc
        .and_then(|w| w.0.target_uri)
        .filter(|u| !u.is_empty());
    let url = match uri {
        Some(u) => target_uri(u),
        None => match record_url {
            Some(u) if !u.is_empty() => target_uri(Cow::Borrowed(u)),
            _ => return Parsed::Fallback, // Python raises bad_wat_shape
        },
    };
    if url.is_empty() {
        return Parsed::Fallback; // "<>": Python raises bad_wat_shape
    }
    let (mut base, head_links) = match meta.head {
        Some(Obj(h)) => (h.base, h.link),
        None => (None, None),
    };
    let mut images = Vec::new();
    let mut lic_links = Vec::new();
    for Obj(link) in meta.links.unwrap_or_default() {
        let path = link.path.as_deref();
        if path == Some("IMG@/src") {
            images.push((link.url, link.alt));
        } else if !has_cc {
            if path == Some("BASE@/href") && base.is_none() {
                base = link.url;
            }
        } else if let Some(p) = path {
            if p.starts_with("A@") || p.starts_with("LINK@") {
                if let Some(u) = link.url {
                    if u.to_lowercase().contains("creativecommons.org") {
                        lic_links.push((u, link.rel));
                    }
                }
            } else if p.starts_with("BASE@") && base.is_none() {
                base = link.url;
            }
        }
    }
    for Obj(hl) in head_links.unwrap_or_default() {
        if let Some(u) = hl.url {
            lic_links.push((u, hl.rel));
        }
    }
    Parsed::Page(Page {
        url,
        images,
        base,
        lic_links,
    })
}

/// captions.clean_caption for ASCII text without entities (no ftfy, no NFC: ASCII).
fn clean_ascii(alt: &str, min_c: usize, max_c: usize) -> Result<String, &'static str> {
    if caption::too_long_to_clean(alt.len(), max_c) {
        return Err(CAPTION_TOO_LONG);
    }
    caption::collapse_and_bound(alt.chars(), alt, min_c, max_c)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// Python's str.strip() set of urls._clean_raw, plus the tab/newline it removes inside.
fn is_url_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c' | '\x0b' | '\0')
}

/// The entity of captions.unescape_entities at the start of `rest` (just after an `&`):
/// `#123;`, `#x1F;` or `name;` with a 2-32 character name, each with its ';'. Returns
/// (bytes up to and including the ';', the part between `&` and ';').
fn entity_at(rest: &[u8]) -> Option<(usize, &[u8])> {
    let run = |from: usize, ok: fn(&u8) -> bool| rest[from..].iter().take_while(|c| ok(c)).count();
    let (start, n, lo, hi) = match rest {
        [b'#', b'x' | b'X', ..] => (2, run(2, u8::is_ascii_hexdigit), 1, 6),
        [b'#', ..] => (1, run(1, u8::is_ascii_digit), 1, 7),
        [c, ..] if c.is_ascii_alphabetic() => (0, run(0, u8::is_ascii_alphanumeric), 2, 32),
        _ => return None,
    };
    ((lo..=hi).contains(&n) && rest.get(start + n) == Some(&b';'))
        .then(|| (start + n + 1, &rest[..start + n]))
}

/// What html.unescape gives for an entity body, for the ones that decode to printable
/// ASCII (`amp`, `lt`, `gt`, `quot`, `apos`, and numeric references to U+0020..U+007E);
/// None for every other one (Python decodes those).
fn simple_entity(body: &[u8]) -> Option<u8> {
    let code = match body {
        b"amp" => return Some(b'&'),
        b"lt" => return Some(b'<'),
        b"gt" => return Some(b'>'),
        b"quot" => return Some(b'"'),
        b"apos" => return Some(b'\''),
        [b'#', b'x' | b'X', hex @ ..] => {
            u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?
        }
        [b'#', dec @ ..] => std::str::from_utf8(dec).ok()?.parse::<u32>().ok()?,
        _ => return None,
    };
    u8::try_from(code)
        .ok()
        .filter(|c| (0x20..=0x7e).contains(c))
}

/// entities.unescape_attribute(s) when every character reference in `s` is a simple one
/// (the text is unchanged when it has none); None when Python has to decode it: an `&`
/// followed by a letter, digit or `#` that is not a complete simple reference (HTML5 decodes
/// `&amp` without ';', numeric references without ';', ... the Python rule knows them all).
fn unescape_simple(s: &str) -> Option<Cow<'_, str>> {
    let b = s.as_bytes();
    let Some(first) = memchr::memchr(b'&', b) else {
        return Some(Cow::Borrowed(s));
    };
    let mut out: Option<Vec<u8>> = None;
    let mut i = first;
    let mut copied = 0; // bytes of `s` already in `out`
    while let Some(k) = memchr::memchr(b'&', &b[i..]) {
        let at = i + k;
        match entity_at(&b[at + 1..]) {
            Some((len, body)) => {
                let c = simple_entity(body)?;
                let o = out.get_or_insert_with(|| Vec::with_capacity(b.len()));
                o.extend_from_slice(&b[copied..at]);
                o.push(c);
                copied = at + 1 + len;
                i = copied;
            }
            None => {
                // '&' before anything else is literal text in HTML5
                if matches!(b.get(at + 1), Some(c) if c.is_ascii_alphanumeric() || *c == b'#') {
                    return None;
                }
                i = at + 1;
            }
        }
    }
    Some(match out {
        None => Cow::Borrowed(s),
        Some(mut o) => {
            o.extend_from_slice(&b[copied..]);
            // only ASCII bytes were put in place of whole entities: still UTF-8
            Cow::Owned(String::from_utf8(o).expect("ASCII replaced ASCII"))
        }
    })
}

fn is_path_byte(b: u8) -> bool {
    b > 0x20 && b < 0x7f && b != b'#' && b != b'?'
}

fn is_query_byte(b: u8) -> bool {
    b > 0x20 && b < 0x7f && b != b'#'
}

/// After a path: `?query` (returned) and `#fragment`, reaching the end of `s`; else None.
fn query_and_fragment(s: &str, mut i: usize) -> Option<Option<&str>> {
    let b = s.as_bytes();
    let mut query = None;
    if i < b.len() && b[i] == b'?' {
        let qs = i + 1;
        i = qs;
        while i < b.len() && is_query_byte(b[i]) {
            i += 1;
        }
        query = Some(&s[qs..i]);
    }
    if i < b.len() && b[i] == b'#' {
        i += 1;
        // any character above U+0020 (UTF-8 continuation bytes are all >= 0x80)
        while i < b.len() && b[i] > 0x20 {
            i += 1;
        }
    }
    (i == b.len()).then_some(query)
}

/// urls._RAW_ABS.fullmatch: (scheme, host, path, query).
fn match_abs(s: &str) -> Option<(&str, &str, Option<&str>, Option<&str>)> {
    let b = s.as_bytes();
    let (scheme, mut i) = if s.starts_with("https://") {
        ("https", 8)
    } else if s.starts_with("http://") {
        ("http", 7)
    } else {
        return None;
    };
    let hs = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'-') {
        i += 1;
    }
    if i == hs {
        return None;
    }
    let host = &s[hs..i];
    let mut path = None;
    if i < b.len() && b[i] == b'/' {
        let ps = i;
        i += 1;
        while i < b.len() && is_path_byte(b[i]) {
            i += 1;
        }
        path = Some(&s[ps..i]);
    }
    let query = query_and_fragment(s, i)?;
    Some((scheme, host, path, query))
}

/// urls._RAW_REL.fullmatch: (path, query).
fn match_rel(s: &str) -> Option<(&str, Option<&str>)> {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'/'));
    let first = *b.get(i)?;
    if !is_path_byte(first) || matches!(first, b'/' | b'.' | b':' | b'\\') {
        return None;
    }
    i += 1;
    while i < b.len() && is_path_byte(b[i]) && b[i] != b':' && b[i] != b'\\' {
        i += 1;
    }
    let path = &s[..i];
    let query = query_and_fragment(s, i)?;
    Some((path, query))
}

/// urls._join_dot_segments: `../x.jpg` against the base directory, or None.
fn join_dot_segments(origin: &str, directory: &str, raw: &str) -> Option<String> {
    let mut i = 0;
    let mut up = 0;
    loop {
        if raw[i..].starts_with("../") {
            up += 1;
            i += 3;
        } else if raw[i..].starts_with("./") {
            i += 2;
        } else {
            break;
        }
    }
    let rest = &raw[i..];
    let dpath = directory.get(origin.len()..)?;
    let last = rest.chars().next_back()?;
    if i == 0
        || matches!(rest.as_bytes()[0], b'?' | b'#' | b'.' | b'/')
        || last <= ' '
        || rest.contains("/.")
        || rest.contains("//")
        || dpath.contains("//")
        || rest.contains([':', '\\', '\t', '\n', '\r'])
    {
        return None;
    }
    let segs: Vec<&str> = dpath.split('/').collect();
    let segs = if segs.len() >= 2 {
        &segs[1..segs.len() - 1]
    } else {
        &segs[0..0]
    };
    let keep = &segs[..segs.len().saturating_sub(up)];
    let mut out = String::with_capacity(origin.len() + rest.len() + 64);
    out.push_str(origin);
    out.push('/');
    if !keep.is_empty() {
        out.push_str(&keep.join("/"));
        out.push('/');
    }
    out.push_str(rest);
    Some(out)
}

/// What urls.page_resolver needs of one page's base, computed by Python (urlsplit rules).
struct PageBase {
    // urls._base_parts: ('scheme://netloc', 'scheme://netloc/dir/')
    parts: Option<(String, String)>,
    // page_resolver's lower-cased origin and directory path
    origin: Option<(String, String)>,
    // urls.resolve_base(page_url, base href): what the Python fallback resolves against
    base: String,
}

/// PageBase of a page without <base href> whose URL has the plain absolute shape
/// (match_abs): what urls.base_parts and urls.page_origin give for it, without urlsplit.
fn simple_page_base(page_url: &str) -> Option<PageBase> {
    let (scheme, host, path, _) = match_abs(page_url)?;
    let path = path.unwrap_or("");
    let netloc = format!("{scheme}://{host}");
    let (parts, origin) = if path.contains("/.") || path.contains('\\') {
        (None, None) // base_parts refuses such a base: Python resolves every relative src
    } else {
        let dir = match path.rfind('/') {
            Some(k) => &path[..=k],
            None => "/",
        };
        let origin = (!dir.contains("//")).then(|| {
            (
                format!("{scheme}://{}", host.to_ascii_lowercase()),
                dir.to_string(),
            )
        });
        (Some((netloc.clone(), format!("{netloc}{dir}"))), origin)
    };
    Some(PageBase {
        parts,
        origin,
        base: page_url.to_string(),
    })
}

#[pyclass(module = "laion_spark_native")]
struct WatExtractor {
    min_caption_chars: usize,
    max_caption_chars: usize,
    max_url_chars: usize,
    drop_extensions: HashSet<String>,
    max_images_per_page: usize,
    dedup_by_url: bool,
    // alt (decoded) -> (text | None, reason | None, sample_id caption | None)
    clean_alt: PyObject,
    // entities.unescape_attribute
    unescape: PyObject,
    // the WAT's attribute values are already decoded: never decode them (again)
    decoded: bool,
    // (page_url, decoded base href | None) -> (parts | None, (origin, directory) | None, base)
    page_setup: PyObject,
    // (raw src, base) -> (url | None, reason | None): urls.resolve_image_url with the rules
    resolve_url: PyObject,
    // [(href, rel)] -> license | None: license.page_license
    license_of: PyObject,
    // rejection counts of the records so far (take_rejected hands them over)
    rejected: HashMap<Reason, u64>,
    // language id of the kept captions (None: language_id off, every pair `nolang`)
    language: Option<Py<LanguageId>>,
    min_language_score: f64,
    english_codes: HashSet<String>,
    // non-ASCII captions in the core (None: every one goes to clean_alt)
    caption_tables: Option<caption::CaptionTables>,
    fix_text: bool,
    // alt texts handed to clean_alt (tests check what stays in the core)
    python_captions: Cell<u64>,
}

impl WatExtractor {
    /// An attribute value of the WAT as the HTML attribute's value: itself when the WAT is
    /// decoded, else decoded here (simple references) or by entities.unescape_attribute.
    fn decode<'s>(&self, py: Python<'_>, s: &'s str) -> PyResult<Cow<'s, str>> {
        if self.decoded {
            return Ok(Cow::Borrowed(s));
        }
        match unescape_simple(s) {
            Some(t) => Ok(t),
            None => Ok(Cow::Owned(self.unescape.call1(py, (s,))?.extract(py)?)),
        }
    }

    /// `decode` of a value the caller owns or borrows from the record.
    fn decode_cow<'s>(&self, py: Python<'_>, s: Cow<'s, str>) -> PyResult<Cow<'s, str>> {
        Ok(match self.decode(py, &s)? {
            Cow::Borrowed(_) => s,
            Cow::Owned(o) => Cow::Owned(o),
        })
    }

    /// urls.resolve_image_url's verdict on `data:` and `javascript:` sources (the length
    /// check comes first there, on the cleaned source), without calling into Python.
    fn scheme_rejection(&self, raw: &str) -> Option<&'static str> {
        let b = raw.as_bytes();
        let reason = if b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"data:") {
            DATA_URL
        } else if b.len() >= 11 && b[..11].eq_ignore_ascii_case(b"javascript:") {
            JAVASCRIPT_URL
        } else {
            return None;
        };
        // _clean_raw: strip the ends (the start is a letter), drop tabs/newlines inside
        let cleaned = raw.trim_end_matches(is_url_blank);
        let n = if cleaned.len() <= self.max_url_chars {
            0 // at most as many characters as bytes
        } else {
            cleaned
                .chars()
                .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                .count()
        };
        Some(if n > self.max_url_chars {
            URL_TOO_LONG
        } else {
            reason
        })
    }

    fn has_dropped_extension(&self, path: &str) -> bool {
        let seg = path.rsplit('/').next().unwrap_or("");
        match seg.rfind('.') {
            Some(k) => self
                .drop_extensions
                .contains(&seg[k + 1..].to_ascii_lowercase()),
            None => false,
        }
    }

    /// urls.page_resolver's resolve(raw) for a non-empty raw src.
    fn resolve(
        &self,
        py: Python<'_>,
        page: &PageBase,
        raw: &str,
    ) -> PyResult<Result<String, Reason>> {
        if let Some(reason) = self.scheme_rejection(raw) {
            return Ok(Err(Cow::Borrowed(reason)));
        }
        let joined;
        let mut abs = match_abs(raw);
        if abs.is_none() && raw.starts_with('.') {
            if let Some((origin, directory)) = &page.parts {
                joined = join_dot_segments(origin, directory, raw);
                abs = joined.as_deref().and_then(match_abs);
            }
        }
        // the URL up to its path (path_start..: the path), then its query if not empty
        let (mut url, path_start, query) = if let Some((scheme, host, path, query)) = abs {
            let mut url = format!("{scheme}://{}", host.to_ascii_lowercase());
            let ps = url.len();
            url.push_str(path.unwrap_or("/"));
            (url, ps, query)
        } else if let (Some((origin, directory)), Some((path, query))) = (
            page.origin
                .as_ref()
                .filter(|_| !raw.contains("/.") && !raw.contains("//")),
            match_rel(raw),
        ) {
            let mut url = String::with_capacity(origin.len() + directory.len() + raw.len());
            url.push_str(origin);
            let ps = url.len();
            if !path.starts_with('/') {
                url.push_str(directory);
            }
            url.push_str(path);
            (url, ps, query)
        } else {
            let got: (Option<String>, Option<String>) = self
                .resolve_url
                .call1(py, (raw, page.base.as_str()))?
                .extract(py)?;
            return Ok(match got {
                (Some(url), None) => Ok(url),
                (_, reason) => Err(reason.map_or(Cow::Borrowed(EMPTY_URL), Cow::Owned)),
            });
        };
        let path_end = url.len();
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        let raw_chars = if raw.len() > self.max_url_chars {
            raw.chars().count()
        } else {
            0
        };
        if raw_chars > self.max_url_chars || url.len() > self.max_url_chars {
            return Ok(Err(Cow::Borrowed(URL_TOO_LONG)));
        }
        if !self.drop_extensions.is_empty()
            && self.has_dropped_extension(&url[path_start..path_end])
        {
            return Ok(Err(Cow::Borrowed(BAD_EXTENSION)));
        }
        Ok(Ok(url))
    }

    /// language.detect_clean + language.language_group of a clean caption:
    /// (code | None, min(1.0, probability), "en" | "multi" | "nolang").
    fn language_of(
        &self,
        model: Option<&lid::LidModel>,
        text: &str,
    ) -> (Option<String>, f64, &'static str) {
        let found = match model {
            Some(m) if !text.is_empty() => m.predict(text),
            _ => None,
        };
        let Some((code, prob)) = found else {
            return (None, 0.0, "nolang");
        };
        let score = (prob as f64).min(1.0);
        let group = if score < self.min_language_score {
            "nolang"
        } else if self.english_codes.contains(code) {
            "en"
        } else {
            "multi"
        };
        (Some(code.to_string()), score, group)
    }

    /// captions.clean_caption (+ the sample_id form of the caption) of one alt as the WAT
    /// has it (decoded here first unless the WAT is decoded).
    fn caption(
        &self,
        py: Python<'_>,
        alt: &str,
    ) -> PyResult<Result<(String, Option<String>), Reason>> {
        let text = self.decode(py, alt)?;
        let (min_c, max_c) = (self.min_caption_chars, self.max_caption_chars);
        let done = if text.is_ascii() {
            Some(clean_ascii(&text, min_c, max_c))
        } else {
            self.caption_tables
                .as_ref()
                .and_then(|t| t.clean(&text, min_c, max_c, self.fix_text))
        };
        if let Some(done) = done {
            return Ok(done.map(|t| (t, None)).map_err(Cow::Borrowed));
        }
        self.python_captions.set(self.python_captions.get() + 1);
        let got: (Option<String>, Option<String>, Option<String>) =
            self.clean_alt.call1(py, (text.as_ref(),))?.extract(py)?;
        Ok(match got {
            (Some(text), None, key) => Ok((text, key)),
            (_, reason, _) => Err(reason.map_or(Cow::Borrowed(NO_ALT), Cow::Owned)),
        })
    }
}

#[pymethods]
impl WatExtractor {
    #[new]
    #[pyo3(signature = (
        min_caption_chars, max_caption_chars, max_url_chars, drop_extensions,
        max_images_per_page, dedup_by_url, clean_alt, unescape, page_setup, resolve_url,
        license_of, language, min_language_score, english_codes, caption_tables, fix_text,
        decoded
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        min_caption_chars: usize,
        max_caption_chars: usize,
        max_url_chars: usize,
        drop_extensions: Vec<String>,
        max_images_per_page: usize,
        dedup_by_url: bool,
        clean_alt: PyObject,
        unescape: PyObject,
        page_setup: PyObject,
        resolve_url: PyObject,
        license_of: PyObject,
        language: Option<Py<LanguageId>>,
        min_language_score: f64,
        english_codes: Vec<String>,
        caption_tables: Option<CaptionTablesArg>,
        fix_text: bool,
        decoded: bool,
    ) -> PyResult<Self> {
        let caption_tables = match caption_tables {
            None => None,
            Some((safe, word, space, gate, sets, branches)) => Some(
                caption::CaptionTables::new(safe, word, space, gate, sets, branches)
                    .map_err(pyo3::exceptions::PyValueError::new_err)?,
            ),
        };
        Ok(WatExtractor {
            min_caption_chars,
            max_caption_chars,
            max_url_chars,
            drop_extensions: drop_extensions.into_iter().collect(),
            max_images_per_page,
            dedup_by_url,
            clean_alt,
            unescape,
            decoded,
            page_setup,
            resolve_url,
            license_of,
            rejected: HashMap::new(),
            language,
            min_language_score,
            english_codes: english_codes.into_iter().collect(),
            caption_tables,
            fix_text,
            python_captions: Cell::new(0),
        })
    }

    /// ftfy.badness.is_bad(text) as the core computes it (None without caption tables);
    /// for the tests that compare it with ftfy's regex.
    fn is_bad(&self, text: &str) -> Option<bool> {
        let chars: Vec<char> = text.chars().collect();
        self.caption_tables.as_ref().map(|t| t.is_bad(&chars))
    }

    /// How many alt texts went to Python (clean_alt) so far.
    fn python_captions(&self) -> u64 {
        self.python_captions.get()
    }

    /// {rejection reason: count} of the records since the last call (then cleared).
    fn take_rejected(&mut self) -> HashMap<String, u64> {
        self.rejected
            .drain()
            .map(|(k, v)| (k.into_owned(), v))
            .collect()
    }

    /// Pairs of one WAT JSON record, each as the tuple `prefix + (sample_id, url, text,
    /// page_url, language, language_score, language_group, license) + suffix` (with
    /// suffix = (crawl_id,) that is pairs.Pair's field order; the extract stage asks for its
    /// row layout directly). None: Python must do this record (unusual shape or invalid
    /// JSON); False: no HTML page in it, or a page the status rule refuses (counted).
    /// Rejected images are counted (take_rejected).
    #[pyo3(signature = (data, record_url, prefix, suffix))]
    fn record(
        &mut self,
        py: Python<'_>,
        data: &[u8],
        record_url: Option<&str>,
        prefix: &Bound<'_, PyTuple>,
        suffix: &Bound<'_, PyTuple>,
    ) -> PyResult<PyObject> {
        let Ok(text) = std::str::from_utf8(data) else {
            return Ok(py.None());
        };
        if orjson_may_reject(data) {
            return Ok(py.None());
        }
        let has_cc = memchr::memmem::find(data, b"reativecommons").is_some();
        let page = match parse_record(text, has_cc, record_url) {
            Parsed::Fallback => return Ok(py.None()),
            Parsed::NotHtml => return Ok(false.into_py(py)),
            Parsed::Rejected(reason) => {
                *self.rejected.entry(reason.into()).or_default() += 1;
                return Ok(false.into_py(py));
            }
            Parsed::Page(p) => p,
        };
        let mut images = page.images;
        if images.len() > self.max_images_per_page {
            let extra = images.len() - self.max_images_per_page;
            *self.rejected.entry(TOO_MANY_IMAGES.into()).or_default() += extra as u64;
            images.truncate(self.max_images_per_page);
        }
        let simple = if page.base.is_none() {
            simple_page_base(&page.url)
        } else {
            None
        };
        let base = match simple {
            Some(b) => b,
            None => {
                let base_href = match page.base.as_deref() {
                    Some(b) => Some(self.decode(py, b)?),
                    None => None,
                };
                let setup: PageSetup = self
                    .page_setup
                    .call1(py, (page.url.as_ref(), base_href.as_deref()))?
                    .extract(py)?;
                PageBase {
                    parts: setup.0.map(|(_, origin, directory)| (origin, directory)),
                    origin: setup.1,
                    base: setup.2,
                }
            }
        };
        let mut kept: Vec<(String, String, String)> = Vec::new();
        let mut seen_ids: HashSet<[u8; 16]> = HashSet::new();
        let mut seen_urls: HashSet<String> = HashSet::new();
        for (src, alt) in images {
            let Some(alt) = alt else {
                *self.rejected.entry(NO_ALT.into()).or_default() += 1;
                continue;
            };
            let (text, key) = match self.caption(py, &alt)? {
                Ok(t) => t,
                Err(reason) => {
                    *self.rejected.entry(reason).or_default() += 1;
                    continue;
                }
            };
            let src = match src {
                Some(s) => Some(self.decode_cow(py, s)?),
                None => None,
            };
            let url = match src.as_deref() {
                None | Some("") => Err(Cow::Borrowed(EMPTY_URL)),
                Some(raw) => self.resolve(py, &base, raw)?,
            };
            let url = match url {
                Ok(u) => u,
                Err(reason) => {
                    *self.rejected.entry(reason).or_default() += 1;
                    continue;
                }
            };
            let mut h = Sha256::new();
            h.update(url.as_bytes());
            h.update(b"\t");
            h.update(key.as_deref().unwrap_or(&text).as_bytes());
            let digest: [u8; 32] = h.finalize().into();
            let head: [u8; 16] = digest[..16].try_into().expect("16 bytes");
            if !seen_ids.insert(head) {
                *self.rejected.entry(DUPLICATE_IN_PAGE.into()).or_default() += 1;
                continue;
            }
            if self.dedup_by_url && !seen_urls.insert(url.clone()) {
                *self
                    .rejected
                    .entry(DUPLICATE_URL_IN_PAGE.into())
                    .or_default() += 1;
                continue;
            }
            kept.push((hex(&head), url, text));
        }
        // license of the page: pairs.page_license over its CC and head links (Python, rare)
        let license: PyObject = if page.lic_links.is_empty() || kept.is_empty() {
            py.None()
        } else {
            let links = PyList::empty_bound(py);
            for (href, rel) in &page.lic_links {
                let rel = match rel.as_deref() {
                    Some(r) => Some(self.decode(py, r)?),
                    None => None,
                };
                links.append((self.decode(py, href)?, rel))?;
            }
            self.license_of.call1(py, (links,))?
        };
        let page_url = page.url.into_py(py);
        let model = self.language.as_ref().map(|m| &m.get().model);
        let rows = PyList::empty_bound(py);
        let mut fields: Vec<PyObject> = Vec::with_capacity(prefix.len() + 8 + suffix.len());
        for (sid, url, text) in kept {
            let (code, score, group) = self.language_of(model, &text);
            fields.clear();
            fields.extend(prefix.iter().map(|x| x.unbind()));
            fields.extend([
                sid.into_py(py),
                url.into_py(py),
                text.into_py(py),
                page_url.clone_ref(py),
                code.into_py(py),
                score.into_py(py),
                group.into_py(py),
                license.clone_ref(py),
            ]);
            fields.extend(suffix.iter().map(|x| x.unbind()));
            rows.append(PyTuple::new_bound(py, fields.drain(..)))?;
        }
        Ok(rows.into_py(py))
    }
}

/// fastText language id (lid.176), the same labels and bit-identical scores as fastText.
#[pyclass(module = "laion_spark_native", frozen)]
struct LanguageId {
    model: lid::LidModel,
}

#[pymethods]
impl LanguageId {
    #[new]
    fn new(path: &str) -> PyResult<Self> {
        lid::LidModel::load(path)
            .map(|model| LanguageId { model })
            .map_err(pyo3::exceptions::PyValueError::new_err)
    }

    /// [(label without "__label__" | None, probability)] of fastText's predict(text + "\n",
    /// k=1, threshold=0.0) for each text; (None, 0.0) where it predicts nothing.
    fn predict_batch(&self, texts: Vec<String>) -> Vec<(Option<&str>, f32)> {
        texts
            .iter()
            .map(|t| match self.model.predict(t) {
                Some((label, p)) => (Some(label), p),
                None => (None, 0.0),
            })
            .collect()
    }
}

/// (32-byte PDQ hash, quality) of an RGB image given as rows x cols x 3 bytes (row-major),
/// computed without the GIL (pdq.rs; the same bits as the reference).
#[pyfunction]
fn pdq_hash(py: Python<'_>, rgb: &[u8], rows: usize, cols: usize) -> PyResult<(Vec<u8>, i32)> {
    if rgb.len() != rows * cols * 3 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "pdq_hash: {} bytes is not {rows} x {cols} x 3",
            rgb.len()
        )));
    }
    let (bits, quality) = py.allow_threads(|| pdq::hash_rgb(rgb, rows, cols));
    Ok((bits.to_vec(), quality))
}

#[pymodule]
fn laion_spark_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<WatExtractor>()?;
    m.add_class::<LanguageId>()?;
    m.add_function(wrap_pyfunction!(pdq_hash, m)?)?;
    Ok(())
}
