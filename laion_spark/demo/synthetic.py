"""Generated image-caption data: coloured shapes on backgrounds, with captions that say so.

Used by the demo crawl, to train the tiny CLIP and the demo's score heads, and by tests and
benchmarks. Everything is deterministic given a seed, so the same sample is the same on every
run and machine.

Three optional, honestly labelled properties give the score stage something to find
(`make_samples(..., unsafe_rate=, watermark_rate=, low_quality_rate=)`; all off by default,
and then the samples are exactly what they always were):

- `unsafe`: the demo's STAND-IN "unsafe" category, a generated pattern (the background is
  drawn as magenta/black hazard stripes, kept at full contrast when the rest of the image is
  darkened: see Sample.image). It is a synthetic category that lets the NSFW machinery
  (punsafe, safe mode, curation) be seen working; it is not NSFW content and a head trained
  on it is not an NSFW detector.
- `watermark`: watermark-style text or a logo overlaid after everything else (tiled
  diagonal text, a boxed corner credit, or a large translucent logo), as stock sites do.
- `quality` in [0, 1]: 1 is the image as drawn; lower is darker, duller and flatter
  (brightness, saturation and contrast reduced). `aesthetic` = 1 + 9 * quality, on LAION's
  1-10 aesthetic scale. Blur and noise are not used: tiny-clip's 32-px input does not see
  them (a head over its embeddings learns nothing from them).
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]
# more shapes `render` draws; the demo uses SHAPES only (the mini-DataComp benchmark uses
# all twelve, for a longer tail of rare concepts)
MORE_SHAPES = ["diamond", "hexagon", "crescent", "arrow", "frame", "bar"]
POSITIONS = ["left", "right", "top", "bottom", "center"]
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "sky": (170, 200, 235),
    "sand": (215, 195, 150),
    "dark": (40, 40, 55),
}
_TEMPLATES = [
    "a {color} {shape} on the {position}",
    "photo of a {color} {shape} at the {position}",
    "a {color} {shape} placed {position}, {bg} background",
    "{color} {shape} in the {position} of the picture",
    "an image with a {color} {shape} on the {position}",
]


@dataclass(frozen=True)
class Attributes:
    color: str
    shape: str
    position: str
    background: str

    def caption(self, rng: random.Random) -> str:
        t = rng.choice(_TEMPLATES)
        pos = "middle" if self.position == "center" and "{position}," in t else self.position
        return t.format(color=self.color, shape=self.shape, position=pos, bg=self.background)

    def caption_in(self, language: str, rng: random.Random) -> str:
        """A caption in `language` (en or one of CAPTION_LANGUAGES), from its templates."""
        if language == "en":
            return self.caption(rng)
        return _caption_in(self, language, rng)


def random_attributes(rng: random.Random) -> Attributes:
    color = rng.choice(list(COLORS))
    bg = rng.choice([b for b in BACKGROUNDS if not (b == "dark" and color == "black")])
    return Attributes(color, rng.choice(SHAPES), rng.choice(POSITIONS), bg)


def _center(position: str, size: int, rng: random.Random) -> tuple[float, float]:
    q, h = size / 4, size / 2
    jitter = lambda: rng.uniform(-size * 0.05, size * 0.05)  # noqa: E731
    cx, cy = {
        "left": (q, h),
        "right": (3 * q, h),
        "top": (h, q),
        "bottom": (h, 3 * q),
        "center": (h, h),
    }[position]
    return cx + jitter(), cy + jitter()


# the stand-in "unsafe" category: what it is, in words (demo output, head metadata, docs)
STANDIN_UNSAFE = "hazard-stripes"
STANDIN_UNSAFE_NOTE = (
    "stand-in 'unsafe' category: generated images with a magenta/black hazard-striped "
    "background (kept at full contrast on darkened images); a synthetic category, not an "
    "NSFW detector"
)
_STRIPES = ((230, 0, 200), (20, 20, 20))


def _hazard_stripes(img: Image.Image, seed: int) -> None:
    """Paint the background as diagonal stripes (the stand-in unsafe category)."""
    size = img.size[0]
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, size, size], fill=_STRIPES[1])
    step = max(4, size // 8)
    off = random.Random(seed ^ 0x5EED).randint(0, step)
    for k in range(-size - step, 2 * size, step):
        x = k + off
        d.polygon(
            [(x, 0), (x + step // 2, 0), (x + step // 2 - size, size), (x - size, size)],
            fill=_STRIPES[0],
        )


@dataclass(frozen=True)
class Jitter:
    """How much `render` varies a drawing from its image seed (the defaults: the demo's)."""

    background: int = 12  # +- per background channel
    radius: tuple[float, float] = (0.14, 0.2)  # shape radius, as a fraction of the size
    color: int = 0  # +- per shape colour channel (0: the exact COLORS, no draws)


DEMO_JITTER = Jitter()


def _polygon(cx: float, cy: float, r: float, n: int, rot: float = 0.0) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(rot + 2 * math.pi * i / n), cy + r * math.sin(rot + 2 * math.pi * i / n))
        for i in range(n)
    ]


def _draw_shape(
    d: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    r: float,
    col: tuple[int, ...],
    bg: tuple[int, ...],
) -> None:
    """One of SHAPES or MORE_SHAPES of radius `r` at (cx, cy); `bg` cuts the crescent."""
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=col)
    elif shape == "square":
        d.rectangle(box, fill=col)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
    elif shape == "star":
        pts = []
        for i in range(10):
            a = math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
        d.polygon(pts, fill=col)
    elif shape == "cross":
        w = r * 0.35
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=col)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=col)
    elif shape == "ring":
        d.ellipse(box, outline=col, width=max(2, int(r * 0.35)))
    elif shape == "diamond":
        d.polygon(_polygon(cx, cy, r, 4, math.pi / 2), fill=col)
    elif shape == "hexagon":
        d.polygon(_polygon(cx, cy, r, 6), fill=col)
    elif shape == "crescent":
        d.ellipse(box, fill=col)
        o = r * 0.55
        d.ellipse([cx - r + o, cy - r, cx + r + o, cy + r], fill=bg)
    elif shape == "arrow":
        w = r * 0.3
        d.rectangle([cx - r, cy - w, cx + 0.1 * r, cy + w], fill=col)
        d.polygon(
            [(cx + r, cy), (cx + 0.1 * r, cy - r * 0.8), (cx + 0.1 * r, cy + r * 0.8)], fill=col
        )
    elif shape == "frame":
        d.rectangle(box, outline=col, width=max(2, int(r * 0.3)))
    elif shape == "bar":
        d.rectangle([cx - r, cy - r * 0.3, cx + r, cy + r * 0.3], fill=col)


def _stripes_mask(attrs: Attributes, size: int, seed: int, striped: Image.Image) -> Image.Image:
    """255 where `striped` (render(..., standin_unsafe=True)) shows the stripes, 0 on the
    shape: the pixels that differ from the same render without them (no stripe colour can
    equal a background colour, and the shape is drawn identically over both)."""
    plain = render(attrs, size, seed)
    diff = ImageChops.difference(plain, striped).convert("L")
    return diff.point(lambda v: 255 if v else 0)


def render(
    attrs: Attributes,
    size: int = 64,
    seed: int = 0,
    standin_unsafe: bool = False,
    jitter: Jitter = DEMO_JITTER,
) -> Image.Image:
    """Draw the attributes as an RGB image of `size` x `size` (on hazard stripes when
    `standin_unsafe`; everything else is drawn identically)."""
    rng = random.Random(seed)
    bj = jitter.background
    bg = tuple(max(0, min(255, c + rng.randint(-bj, bj))) for c in BACKGROUNDS[attrs.background])
    img = Image.new("RGB", (size, size), bg)  # type: ignore[arg-type]
    if standin_unsafe:
        _hazard_stripes(img, seed)
    d = ImageDraw.Draw(img)
    cx, cy = _center(attrs.position, size, rng)
    r = size * rng.uniform(*jitter.radius)
    col = COLORS[attrs.color]
    if jitter.color:
        cj = jitter.color
        col = tuple(max(0, min(255, c + rng.randint(-cj, cj))) for c in col)
    _draw_shape(d, attrs.shape, cx, cy, r, col, bg)
    return img


def degrade(img: Image.Image, quality: float) -> Image.Image:
    """Lower quality = darker, less saturated, flatter (what a 32-px CLIP can still see)."""
    d = 1.0 - min(max(quality, 0.0), 1.0)
    if d <= 0:
        return img
    img = ImageEnhance.Brightness(img).enhance(1 - 0.6 * d)
    img = ImageEnhance.Color(img).enhance(1 - 0.8 * d)
    return ImageEnhance.Contrast(img).enhance(1 - 0.5 * d)


WATERMARK_TEXTS = ["© stock", "SAMPLE", "© photos", "preview", "watermark", "© studio", "PROOF"]


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=max(6, px))  # scalable (Pillow >= 10.1 + FreeType)
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def overlay_watermark(img: Image.Image, seed: int) -> Image.Image:
    """A stock-photo style watermark: tiled diagonal text, a boxed corner credit or a large
    translucent logo, in white, black or gray; sizes are relative to the image."""
    rng = random.Random(seed)
    w, h = img.size
    col = rng.choice([(255, 255, 255), (0, 0, 0), (200, 200, 200)])
    alpha = rng.randint(120, 200)
    text = rng.choice(WATERMARK_TEXTS)
    style = rng.randrange(3)
    if style == 0:  # tiled text over the whole image, rotated
        layer = Image.new("RGBA", (2 * w, 2 * h), (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        font = _font(int(h * rng.uniform(0.1, 0.16)))
        for y in range(rng.randint(0, 8), 2 * h, max(8, int(h * 0.25))):
            d.text((rng.randint(-10, 5), y), (text + "   ") * 6, fill=(*col, alpha), font=font)
        layer = layer.rotate(rng.uniform(-35, 35), resample=Image.BILINEAR)
        layer = layer.crop((w // 2, h // 2, w // 2 + w, h // 2 + h))
    else:
        layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        d = ImageDraw.Draw(layer)
        if style == 1:  # corner credit on a box
            font = _font(int(h * rng.uniform(0.15, 0.22)))
            bb = d.textbbox((0, 0), text, font=font)
            tw, th = bb[2] - bb[0], bb[3] - bb[1]
            x = rng.choice([2, max(2, w - tw - 4)])
            y = rng.choice([2, max(2, h - th - 6)])
            back = tuple(255 - c for c in col)
            d.rectangle([x - 2, y - 1, x + tw + 2, y + th + 5], fill=(*back, alpha))
            d.text((x - bb[0], y - bb[1]), text, fill=(*col, 255), font=font)
        else:  # large translucent logo: a ring with initials
            r = int(h * rng.uniform(0.25, 0.4))
            cx, cy = w // 2 + rng.randint(-5, 5), h // 2 + rng.randint(-5, 5)
            d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(*col, alpha), width=max(2, r // 5))
            initials = text.strip("© ")[:2].upper()
            font = _font(int(r * 0.9))
            d.text((cx, cy), initials, fill=(*col, alpha), font=font, anchor="mm")
    out = img.convert("RGBA")
    out.alpha_composite(layer)
    return out.convert("RGB")


@dataclass(frozen=True)
class Sample:
    index: int
    attrs: Attributes
    caption: str
    image_seed: int
    mismatched: bool = False
    language: str = "en"  # the caption's language
    unsafe: bool = False  # the stand-in "unsafe" category (STANDIN_UNSAFE_NOTE)
    watermark: bool = False
    quality: float | None = None  # None: the image as drawn

    @property
    def aesthetic(self) -> float:
        """The generated quality signal on LAION's 1-10 aesthetic scale."""
        return 1.0 + 9.0 * (1.0 if self.quality is None else self.quality)

    def image(self, size: int = 64) -> Image.Image:
        img = render(self.attrs, size, self.image_seed, standin_unsafe=self.unsafe)
        if self.quality is not None:
            drawn = img
            img = degrade(img, self.quality)
            if self.unsafe:
                # the stand-in category is defined by stripes that stay at full contrast:
                # darkened and dulled (x0.4 brightness, x0.2 saturation, x0.5 contrast at
                # worst) they fade to a few grey levels that tiny-clip's 32-px view loses,
                # and a stand-in that vanishes under darkening cannot show safe mode working
                img = Image.composite(
                    drawn, img, _stripes_mask(self.attrs, size, self.image_seed, drawn)
                )
        if self.watermark:  # last: the publisher stamps the finished image
            img = overlay_watermark(img, self.image_seed ^ 0x3A7E)
        return img

    def jpeg(self, size: int = 64, quality: int = 90) -> bytes:
        buf = io.BytesIO()
        self.image(size).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()


def make_samples(
    n: int,
    seed: int = 0,
    mismatch_rate: float = 0.0,
    languages: tuple[str, ...] | None = None,
    unsafe_rate: float = 0.0,
    watermark_rate: float = 0.0,
    low_quality_rate: float | None = None,
) -> list[Sample]:
    """`n` samples; a `mismatch_rate` fraction get a caption of different attributes.
    `languages`: each caption in one of them, drawn per sample (None: English, the sequence
    of earlier versions unchanged, so tiny-clip's training data stays the same).

    `unsafe_rate` / `watermark_rate`: fractions drawn as the stand-in unsafe category /
    with a watermark. `low_quality_rate`: when set, every sample gets a quality, a fraction
    this large in [0, 0.3] (aesthetic <= 3.7) and the rest in [0.7, 1] (aesthetic >= 7.3).
    These draws come from their own random stream, so the attributes, captions and
    image seeds are those of the same seed without them.
    """
    rng = random.Random(seed)
    extra = random.Random(f"safety:{seed}")
    out = []
    for i in range(n):
        attrs = random_attributes(rng)
        cap_attrs = attrs
        mismatched = rng.random() < mismatch_rate
        if mismatched:
            # a different colour AND shape, so the caption is plainly wrong
            while cap_attrs.color == attrs.color or cap_attrs.shape == attrs.shape:
                cap_attrs = random_attributes(rng)
        if languages:
            lang = rng.choice(languages)
            caption = cap_attrs.caption_in(lang, rng)
        else:
            lang, caption = "en", cap_attrs.caption(rng)
        # always four draws per sample, whatever the rates, so streams stay aligned
        u, w, low, q = extra.random(), extra.random(), extra.random(), extra.random()
        quality = None
        if low_quality_rate is not None:
            quality = 0.3 * q if low < low_quality_rate else 0.7 + 0.3 * q
        out.append(
            Sample(
                i,
                attrs,
                caption,
                rng.randrange(2**31),
                mismatched,
                lang,
                unsafe=u < unsafe_rate,
                watermark=w < watermark_rate,
                quality=quality,
            )
        )
    return out


# --- captions in other languages ------------------------------------------------------------
# Templates per language with the grammar the words need (gender agreement of the colour
# adjective; German declension with the indefinite article), so captions read like alt text
# a person wrote. Russian is the non-Latin script.
CAPTION_LANGUAGES = ("de", "fr", "es", "ru")

# colour -> forms by gender (m, f, n); German: the adjective stem
_COLOR_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "fr": {
        "red": ("rouge", "rouge"),
        "green": ("vert", "verte"),
        "blue": ("bleu", "bleue"),
        "yellow": ("jaune", "jaune"),
        "purple": ("violet", "violette"),
        "orange": ("orange", "orange"),
        "black": ("noir", "noire"),
        "white": ("blanc", "blanche"),
    },
    "es": {
        "red": ("rojo", "roja"),
        "green": ("verde", "verde"),
        "blue": ("azul", "azul"),
        "yellow": ("amarillo", "amarilla"),
        "purple": ("morado", "morada"),
        "orange": ("naranja", "naranja"),
        "black": ("negro", "negra"),
        "white": ("blanco", "blanca"),
    },
    "de": {
        "red": ("rot",),
        "green": ("grün",),
        "blue": ("blau",),
        "yellow": ("gelb",),
        "purple": ("violett",),
        "orange": ("orangefarben",),
        "black": ("schwarz",),
        "white": ("weiß",),
    },
    "ru": {
        "red": ("красный", "красная", "красное"),
        "green": ("зелёный", "зелёная", "зелёное"),
        "blue": ("синий", "синяя", "синее"),
        "yellow": ("жёлтый", "жёлтая", "жёлтое"),
        "purple": ("фиолетовый", "фиолетовая", "фиолетовое"),
        "orange": ("оранжевый", "оранжевая", "оранжевое"),
        "black": ("чёрный", "чёрная", "чёрное"),
        "white": ("белый", "белая", "белое"),
    },
}
# shape -> (noun, gender index into the colour forms)
_SHAPE_WORDS: dict[str, dict[str, tuple[str, int]]] = {
    "fr": {
        "circle": ("cercle", 0),
        "square": ("carré", 0),
        "triangle": ("triangle", 0),
        "star": ("étoile", 1),
        "cross": ("croix", 1),
        "ring": ("anneau", 0),
    },
    "es": {
        "circle": ("círculo", 0),
        "square": ("cuadrado", 0),
        "triangle": ("triángulo", 0),
        "star": ("estrella", 1),
        "cross": ("cruz", 1),
        "ring": ("anillo", 0),
    },
    # German: 0 masculine, 2 neuter (no feminine shape here)
    "de": {
        "circle": ("Kreis", 0),
        "square": ("Quadrat", 2),
        "triangle": ("Dreieck", 2),
        "star": ("Stern", 0),
        "cross": ("Kreuz", 2),
        "ring": ("Ring", 0),
    },
    "ru": {
        "circle": ("круг", 0),
        "square": ("квадрат", 0),
        "triangle": ("треугольник", 0),
        "star": ("звезда", 1),
        "cross": ("крест", 0),
        "ring": ("кольцо", 2),
    },
}
_POSITION_WORDS: dict[str, dict[str, str]] = {
    "fr": {
        "left": "à gauche",
        "right": "à droite",
        "top": "en haut",
        "bottom": "en bas",
        "center": "au centre",
    },
    "es": {
        "left": "a la izquierda",
        "right": "a la derecha",
        "top": "arriba",
        "bottom": "abajo",
        "center": "en el centro",
    },
    "de": {
        "left": "links",
        "right": "rechts",
        "top": "oben",
        "bottom": "unten",
        "center": "in der Mitte",
    },
    "ru": {
        "left": "слева",
        "right": "справа",
        "top": "сверху",
        "bottom": "снизу",
        "center": "в центре",
    },
}
_BACKGROUND_WORDS: dict[str, dict[str, str]] = {
    "fr": {"gray": "gris", "sky": "ciel", "sand": "sable", "dark": "sombre"},
    "es": {"gray": "gris", "sky": "cielo", "sand": "arena", "dark": "oscuro"},
    "de": {"gray": "grau", "sky": "Himmel", "sand": "Sand", "dark": "dunkel"},
    "ru": {"gray": "серый", "sky": "голубой", "sand": "песочный", "dark": "тёмный"},
}
# {a}: article + colour + noun phrase as the language builds it (see _phrase)
_ML_TEMPLATES: dict[str, list[str]] = {
    "fr": [
        "{a} {pos}",
        "photo d'{a} {pos}",
        "image avec {a} {pos}",
        "{a} {pos}, fond {bg}",
        "{a} {pos} sur l'image",
    ],
    "es": [
        "{a} {pos}",
        "foto de {a} {pos}",
        "imagen con {a} {pos}",
        "{a} {pos}, fondo {bg}",
        "{a} {pos} en la imagen",
    ],
    "de": [
        "{a} {pos}",
        "Foto von {d} {pos}",
        "Bild mit {d} {pos}",
        "{a} {pos}, Hintergrund {bg}",
        "{a} {pos} im Bild",
    ],
    "ru": [
        "{a} {pos}",
        "фото: {a} {pos}",
        "изображение: {a} {pos}",
        "{a} {pos}, фон {bg}",
        "на картинке {a} {pos}",
    ],
}


def _phrase(attrs: Attributes, language: str) -> tuple[str, str]:
    """(nominative phrase, German dative phrase) for the colour + shape."""
    noun, g = _SHAPE_WORDS[language][attrs.shape]
    forms = _COLOR_WORDS[language][attrs.color]
    if language == "de":
        stem = forms[0]
        nom = f"ein {stem}{'er' if g == 0 else 'es'} {noun}"
        return nom, f"einem {stem}en {noun}"
    if language == "ru":
        return f"{forms[g]} {noun}", ""
    article = ("un", "une")[g] if language == "fr" else ("un", "una")[g]
    return f"{article} {noun} {forms[g]}", ""


def _caption_in(attrs: Attributes, language: str, rng: random.Random) -> str:
    if language not in _ML_TEMPLATES:
        raise ValueError(f"no caption templates for language {language!r}")
    nom, dat = _phrase(attrs, language)
    t = rng.choice(_ML_TEMPLATES[language])
    return t.format(
        a=nom,
        d=dat,
        pos=_POSITION_WORDS[language][attrs.position],
        bg=_BACKGROUND_WORDS[language][attrs.background],
    )


def parallel_captions(
    n: int, seed: int, languages: tuple[str, ...] = CAPTION_LANGUAGES
) -> list[tuple[str, str, str]]:
    """`n` (english, translation, language) caption pairs of random attributes: the
    parallel data a multilingual text tower is distilled from (M-CLIP used machine
    translations of English captions; here the templates translate)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        attrs = random_attributes(rng)
        lang = rng.choice(languages)
        en = attrs.caption(rng)
        out.append((en, attrs.caption_in(lang, rng), lang))
    return out
