"""Multilingual text towers (M-CLIP style) and the routing of captions/queries to them.

LAION-5B embedded English captions with CLIP's own text tower and every other caption with
a multilingual CLIP: an XLM-RoBERTa encoder distilled into CLIP's text space, mean-pooled
over tokens, then a linear projection (FreddeFrallan/Multilingual-CLIP). A tower here is
exactly that, stored in the layout M-CLIP's released weights use, so a directory downloaded
from the hub (e.g. M-CLIP/XLM-Roberta-Large-Vit-B-32) loads as is:

    config.json          {"model_type": "M-CLIP", "modelBase": "xlm-roberta-large",
                          "transformerDimensions": 1024, "numDims": 512, ...}
    model.safetensors | pytorch_model.bin   keys transformer.* + LinearTransformation.*
    tokenizer.json, tokenizer_config.json, ...   (a transformers tokenizer)
    laion_spark.json     optional: thresholds per group, the teacher's model id, training

M-CLIP's config names the encoder architecture only by `modelBase` (a hub id). Towers this
project writes carry it inline (`encoder_config`); for released weights the loader reads
`encoder/config.json` when present, else `AutoConfig.from_pretrained(modelBase)` (hub cache).

    towers = load_text_towers(cfg.embed, clip)         # {"multi": TextTower, ...}, {} if none
    emb, ids = encode_routed(clip, towers, texts, groups)   # the stage's routing
    q = encode_queries(cfg, ["un cercle rouge"])       # search: language detected or given

`model_id` = "mclip-<modelBase>@<12 hex of sha256 over weights + tokenizer>", recorded in
`embeddings.text_model_id` beside the image model's `model_id`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from laion_spark.embed.settings import TOWER_GROUPS  # noqa: F401  (re-exported)
from laion_spark.models.device import cached, file_key, resolve_device, resolve_precision
from laion_spark.settings import ConfigError

# config value meaning "the project's tiny tower, distilled from the configured tiny-clip"
TINY_TOWER = "tiny-mclip"
# LAION-5B filtered the non-English half with M-CLIP at 0.26
MCLIP_THRESHOLD = 0.26
MAX_TOKENS = 77  # captions are truncated like CLIP's context
CONFIG = "config.json"
SIDECAR = "laion_spark.json"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@functools.cache
def _module_class():
    """torch module with M-CLIP's attribute names, so state_dict keys match its files."""
    import torch

    class MCLIPText(torch.nn.Module):
        def __init__(self, encoder: Any, in_dim: int, out_dim: int):
            super().__init__()
            self.transformer = encoder
            self.LinearTransformation = torch.nn.Linear(in_dim, out_dim)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
            att = attention_mask.unsqueeze(2).to(hidden.dtype)
            # mean over the caption's tokens (padding excluded), as M-CLIP pools
            pooled = (hidden * att).sum(1) / att.sum(1).clamp_min(1.0)
            return self.LinearTransformation(pooled)

    return MCLIPText


def build_module(encoder: Any, out_dim: int) -> Any:
    """An M-CLIP text module around a transformers encoder (hidden size -> out_dim)."""
    return _module_class()(encoder, int(encoder.config.hidden_size), int(out_dim))


@dataclass
class TextTower:
    module: Any  # MCLIPText, eval mode, on `device`
    tokenizer: Any  # a transformers tokenizer
    device: str
    dim: int
    model_id: str
    precision: str = "fp32"
    # CLIP-filter thresholds of this tower per group it serves ("multi", "nolang")
    thresholds: dict[str, float] = field(default_factory=dict)
    max_length: int = MAX_TOKENS
    meta: dict[str, Any] = field(default_factory=dict)

    def threshold(self, group: str) -> float:
        t = self.thresholds
        return float(t.get(group, t.get("multi", MCLIP_THRESHOLD)))

    def tokenize(self, texts: list[str]) -> Any:
        return self.tokenizer(
            [t or "" for t in texts],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Captions -> (n, dim) float32 L2-normalised, in CLIP's text space."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tok = self.tokenize(texts)
        with torch.inference_mode(), _autocast(self.device, self.precision):
            feats = self.module(
                tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
            )
        f = feats.float()
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return f.cpu().numpy().astype(np.float32, copy=False)


def _autocast(device: str, precision: str):
    import contextlib

    import torch

    if device.startswith("cuda") and precision in ("fp16", "bf16"):
        dt = torch.float16 if precision == "fp16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dt)
    return contextlib.nullcontext()


# --- on disk ---------------------------------------------------------------------------------
def save_text_tower(module: Any, tokenizer: Any, out_dir: str, meta: dict | None = None) -> str:
    """Write `module` + `tokenizer` in M-CLIP's layout (plus the encoder config inline and a
    laion_spark.json sidecar); files land under a temp name, then move into place."""
    from safetensors.torch import save_file

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    enc = module.transformer.config
    lin = module.LinearTransformation
    config = {
        "model_type": "M-CLIP",
        "architectures": ["MultilingualCLIP"],
        "modelBase": meta.get("model_base", enc.model_type) if meta else enc.model_type,
        "transformerDimensions": int(lin.in_features),
        "numDims": int(lin.out_features),
        "encoder_config": enc.to_dict(),
    }
    tokenizer.save_pretrained(str(out))
    _portable_tokenizer_config(out)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, out / "model.safetensors")
    (out / SIDECAR).write_text(json.dumps(meta or {}, indent=2, default=str))
    # config.json last: its presence says the directory is complete
    (out / f"{CONFIG}.tmp").write_text(json.dumps(config, indent=2, default=str))
    os.replace(out / f"{CONFIG}.tmp", out / CONFIG)
    return str(out)


def _portable_tokenizer_config(out: Path) -> None:
    """transformers 5 names its fast tokenizer class TokenizersBackend; write the name
    every transformers version loads a tokenizer.json with."""
    p = out / "tokenizer_config.json"
    if p.is_file():
        conf = json.loads(p.read_text())
        if conf.get("tokenizer_class") in ("TokenizersBackend", None):
            conf["tokenizer_class"] = "PreTrainedTokenizerFast"
            conf.pop("backend", None)
            p.write_text(json.dumps(conf, indent=2))


def _quiet_transformers():
    """transformers warns that config.json's model_type (M-CLIP) is not its own when the
    tokenizer loads from the tower directory: expected here, so silenced while loading."""
    import contextlib

    from transformers.utils import logging as tlog

    @contextlib.contextmanager
    def quiet():
        level = tlog.get_verbosity()
        tlog.set_verbosity_error()
        try:
            yield
        finally:
            tlog.set_verbosity(level)

    return quiet()


def _weights_file(d: Path) -> Path | None:
    for name in _WEIGHTS:
        if (d / name).is_file():
            return d / name
    return None


def is_local(spec: str) -> bool:
    p = spec.removeprefix("file://")
    return Path(p).expanduser().exists() or p.startswith(("/", "./", "../", "~"))


def resolve_spec(spec: str, key: str) -> str:
    """A local directory for `spec`: itself, or the hub snapshot of a hub id."""
    if is_local(spec):
        d = Path(spec.removeprefix("file://")).expanduser()
        if not (d / CONFIG).is_file():
            raise ConfigError(f"{key}: {d} is not a text tower directory (no {CONFIG})")
        return str(d)
    try:
        from huggingface_hub import snapshot_download

        # once per process: search resolves the towers for every query
        return cached(("text_tower_snapshot", spec), lambda: snapshot_download(repo_id=spec))
    except Exception as e:
        raise ConfigError(
            f"{key}: cannot get {spec!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            "download it once (huggingface-cli download ... --local-dir DIR) and set the path"
        ) from None


def load_text_tower(
    path: str, device: str | None = "auto", precision: str = "auto", key: str = "text tower"
) -> TextTower:
    """Load (once per process) the tower in directory `path` (see resolve_spec for hub ids)."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    d = Path(path).expanduser()
    w = _weights_file(d)
    ck = ("text_tower", str(d), file_key(str(w) if w else None), dev, prec)
    return cached(ck, lambda: _load_dir(d, dev, prec, key))


def _encoder_config(d: Path, config: dict, key: str) -> Any:
    from transformers import AutoConfig

    if (d / "encoder" / CONFIG).is_file():
        return AutoConfig.from_pretrained(str(d / "encoder"))
    inline = config.get("encoder_config")
    if inline:
        inline = dict(inline)
        return AutoConfig.for_model(inline.pop("model_type"), **inline)
    base = config.get("modelBase")
    if not base:
        raise ConfigError(f"{key}: {d / CONFIG} names no encoder (modelBase / encoder_config)")
    try:
        return AutoConfig.from_pretrained(base)
    except Exception as e:
        raise ConfigError(
            f"{key}: the encoder config of {base!r} is not available offline ({e}); put it "
            f"at {d / 'encoder' / CONFIG}"
        ) from None


def _read_state(w: Path) -> dict:
    if w.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(w))
    import torch

    return torch.load(str(w), map_location="cpu", weights_only=True)


def _tokenizer_digest(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(
        tokenizer, "_tokenizer", None
    )
    text = (
        backend.to_str()
        if backend is not None
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _load_dir(d: Path, dev: str, prec: str, key: str) -> TextTower:
    from laion_spark.extras import require

    require("multilingual", "transformers", "tokenizers")
    from transformers import AutoModel, AutoTokenizer

    from laion_spark.models.clip import weights_digest

    config = json.loads((d / CONFIG).read_text())
    if "numDims" not in config or "transformerDimensions" not in config:
        raise ConfigError(
            f"{key}: {d / CONFIG} is not an M-CLIP config (numDims, transformerDimensions)"
        )
    w = _weights_file(d)
    if w is None:
        raise ConfigError(f"{key}: {d} has no weights ({' or '.join(_WEIGHTS)})")
    enc_cfg = _encoder_config(d, config, key)
    module = build_module(AutoModel.from_config(enc_cfg), config["numDims"])
    if int(config["transformerDimensions"]) != int(enc_cfg.hidden_size):
        raise ConfigError(
            f"{key}: transformerDimensions {config['transformerDimensions']} != the encoder's "
            f"hidden size {enc_cfg.hidden_size}"
        )
    missing, unexpected = module.load_state_dict(_read_state(w), strict=False)
    if missing and all(k.startswith("transformer.pooler.") for k in missing):
        # saved without the (unused) pooler: drop ours rather than keep random weights
        module.transformer.pooler = None
        missing = []
    # buffers older transformers saved (position_ids) may be present or absent; nothing else
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ConfigError(
            f"{key}: {w} does not fit the M-CLIP layout: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    module.eval()
    with _quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(d))
        except Exception:  # released towers may rely on the base model's tokenizer
            tokenizer = AutoTokenizer.from_pretrained(config.get("modelBase"))
    h = hashlib.sha256((weights_digest(module) + _tokenizer_digest(tokenizer)).encode())
    meta = json.loads((d / SIDECAR).read_text()) if (d / SIDECAR).is_file() else {}
    thresholds = {k: float(v) for k, v in (meta.get("thresholds") or {}).items()}
    base = os.path.basename(str(config.get("modelBase") or "encoder").rstrip("/"))
    max_pos = int(getattr(enc_cfg, "max_position_embeddings", MAX_TOKENS + 2))
    return TextTower(
        module=module.to(dev),
        tokenizer=tokenizer,
        device=dev,
        dim=int(config["numDims"]),
        model_id=f"mclip-{base}@{h.hexdigest()[:12]}",
        precision=prec,
        thresholds=thresholds,
        # XLM-R positions start after the padding index: two fewer than the table
        max_length=min(MAX_TOKENS, max_pos - 2),
        meta=meta,
    )


# --- towers of a config --------------------------------------------------------------------
def tower_paths(embed_cfg: Any, clip: Any = None) -> dict[str, str]:
    """group -> local directory of its tower (tiny-mclip trained/cached against `clip`, hub
    ids fetched); {} when none is configured."""
    out: dict[str, str] = {}
    for group, spec in sorted((embed_cfg.text_towers or {}).items()):
        key = f"embed.text_towers.{group}"
        if spec == TINY_TOWER:
            if clip is None:
                from laion_spark.models.clip import load_clip

                clip = load_clip(embed_cfg)
            out[group] = ensure_tiny_tower(clip)
        else:
            out[group] = resolve_spec(spec, key)
    return out


def load_text_towers(
    embed_cfg: Any, clip: Any, device: str | None = None, paths: dict[str, str] | None = None
) -> dict[str, TextTower]:
    """The configured towers, loaded and checked against the CLIP model they feed."""
    if not embed_cfg.text_towers:
        return {}
    from laion_spark.extras import require

    require("multilingual", "transformers", "tokenizers")
    paths = paths if paths is not None else tower_paths(embed_cfg, clip)
    towers: dict[str, TextTower] = {}
    for group, path in sorted(paths.items()):
        key = f"embed.text_towers.{group}"
        t = load_text_tower(path, device or embed_cfg.device, embed_cfg.precision, key)
        if t.dim != clip.dim:
            raise ConfigError(
                f"{key}: the tower outputs {t.dim} dimensions, the CLIP model {clip.model_id} "
                f"{clip.dim}: it must be distilled into that model's text space"
            )
        teacher = t.meta.get("teacher_model_id")
        if teacher and teacher != clip.model_id:
            raise ConfigError(
                f"{key}: the tower was distilled from {teacher}, the embed model is "
                f"{clip.model_id}: its similarities would mean nothing; train one for this "
                "model (laion-spark train-text-tower)"
            )
        towers[group] = t
    return towers


# --- routing -------------------------------------------------------------------------------
def route_group(
    language_group: str | None, language: str | None, english: frozenset[str] | set[str]
) -> str:
    """The group whose text tower embeds a caption: its language_group; without one, from
    its language code (imported pools); neither: nolang. Same rule as `route_column`."""
    if language_group:
        return language_group
    if not language:
        return "nolang"
    return "en" if language in english else "multi"


def route_column(columns: list[str], english: list[str]) -> Any:
    """`route_group` as a Spark Column over a frame with these columns (missing ones = null)."""
    from pyspark.sql import functions as F

    def col(name: str):
        return F.col(name) if name in columns else F.lit(None).cast("string")

    lang = col("language")
    derived = (
        F.when(lang.isNull() | (lang == ""), F.lit("nolang"))
        .when(lang.isin(*english), F.lit("en"))
        .otherwise(F.lit("multi"))
    )
    grp = col("language_group")
    return F.when(grp.isNotNull() & (grp != ""), grp).otherwise(derived)


def text_model_for(group: str, clip: Any, towers: dict[str, TextTower]) -> str:
    tower = towers.get(group)
    return tower.model_id if tower is not None else clip.model_id


def encode_routed(
    clip: Any, towers: dict[str, TextTower], texts: list[str | None], groups: list[str | None]
) -> tuple[np.ndarray, list[str]]:
    """Each text through its group's tower (CLIP's own text tower when the group has none):
    (n, dim) float32 L2-normalised, and the text model id of each row."""
    n = len(texts)
    clean = [t or "" for t in texts]
    out = np.zeros((n, clip.dim), np.float32)
    ids = [clip.model_id] * n
    by_tower: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if g in towers:
            by_tower.setdefault(g, []).append(i)
    rest = [i for i, g in enumerate(groups) if g not in towers]
    if rest:
        out[rest] = clip.encode_text([clean[i] for i in rest])
    for g, idx in by_tower.items():
        tower = towers[g]
        out[idx] = tower.encode_text([clean[i] for i in idx])
        for i in idx:
            ids[i] = tower.model_id
    return out, ids


def query_group(text: str, language: str | None, cfg: Any) -> str:
    """The group of a search query: `language` given as a group (en/multi/nolang) or an ISO
    code, else detected like a caption at extract (same model, same min score)."""
    from laion_spark.extract import language as lid

    english = frozenset(cfg.extract.english_codes)
    language = (language or "").strip().lower()
    if language:
        if language in ("en", "multi", "nolang"):
            return language
        return route_group(None, language, english)
    code, score = lid.detect(text)
    return lid.language_group(code, score, cfg.extract.min_language_score, english)


def encode_queries(
    cfg: Any, texts: list[str], languages: list[str | None] | None = None
) -> np.ndarray:
    """Search queries -> (n, dim) L2-normalised vectors, each through the text tower of its
    language group (`languages[i]`: a code such as "fr", a group, or None to detect)."""
    from laion_spark.models.clip import load_clip

    clip = load_clip(cfg.embed)
    towers = load_text_towers(cfg.embed, clip)
    if not towers:  # one text tower: nothing to route, no language id to run
        return clip.encode_text(list(texts))
    langs = list(languages) if languages is not None else [None] * len(texts)
    groups = [query_group(t, lang, cfg) for t, lang in zip(texts, langs, strict=True)]
    emb, _ = encode_routed(clip, towers, texts, groups)
    return emb


# --- the tiny tower ----------------------------------------------------------------------------
TINY_VERSION = "v1"


def tiny_tower_dir(clip: Any) -> Path:
    """Cache directory of the tiny tower distilled from `clip` (its id is part of the path:
    a tower is only valid for the text space it was distilled into)."""
    from laion_spark.storage import cache_root

    digest = clip.model_id.rsplit("@", 1)[-1]
    return cache_root() / "models" / f"{TINY_TOWER}-{TINY_VERSION}-{digest}"


def ensure_tiny_tower(clip: Any, log: bool = True) -> str:
    """Directory of the tiny multilingual tower for `clip`, distilling it first if needed
    (once per machine: a file lock makes concurrent processes wait for the first)."""
    import fcntl

    d = tiny_tower_dir(clip)
    if (d / CONFIG).is_file():
        return str(d)
    d.parent.mkdir(parents=True, exist_ok=True)
    with open(d.parent / f".{d.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (d / CONFIG).is_file():
                from laion_spark.embed.distill import train_tiny_tower

                train_tiny_tower(clip, str(d), log=log)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(d)
