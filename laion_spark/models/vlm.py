"""Load a vision-language model (LLaVA family) in ONE way: hub id, local directory, tiny-llava.

    vlm = load_vlm(cfg.dpo.generate)                  # tiny-llava (trained once, cached)
    texts = vlm.generate([pil_image], ["Describe the image."], n=4, temperature=1.0, top_p=0.9,
                         max_new_tokens=64, seed=7)   # [[4 sampled responses]]

Any model `transformers.AutoModelForImageTextToText` loads with a processor whose chat template
takes `{"type": "image"}` blocks works (LlavaForConditionalGeneration, LLaVA-1.5/NeXT, ...).
Loaded once per Python worker (`models.device.cached`), on the device `resolve_device` picks
(the GPU Spark assigned the task, else cpu).

`model_id` = "<name>@<12 hex of sha256 over the weight files>" (for weight files above
`FULL_HASH_BYTES` in total, over their names, sizes and safetensors headers, which hold every
tensor's name, dtype, shape and offsets: hashing 14 GB per worker start would cost more than
the generation of a small pool). Equal weights give equal ids on every node.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laion_spark.models.clip import decode_rgb
from laion_spark.models.device import cached, resolve_device, resolve_precision

log = logging.getLogger(__name__)

TINY_NAME = "tiny-llava"
FULL_HASH_BYTES = 2_000_000_000
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class VlmImageError(ValueError):
    """An image's bytes could not be decoded (or are too large) for the model."""


@dataclass
class LoadedVlm:
    model: Any  # transformers image-text-to-text model, eval mode, on `device`
    processor: Any  # its processor (image processor + tokenizer + chat template)
    device: str
    model_id: str
    precision: str = "fp32"
    max_image_pixels: int = 64_000_000

    def decode(self, data: bytes | None) -> Any:
        """Encoded bytes -> RGB PIL image; VlmImageError when unusable."""
        return decode_rgb(data, self.max_image_pixels, VlmImageError)

    def prompt_text(self, instruction: str) -> str:
        """The model's own chat template around one image and `instruction`."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def generate(
        self,
        images: list[Any],
        instructions: list[str],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[str]]:
        """`n` sampled responses for each (image, instruction), in one batched generate()."""
        import torch

        if not images:
            return []
        texts = [self.prompt_text(i) for i in instructions]
        inputs = self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs and self.precision in ("fp16", "bf16"):
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        torch.manual_seed(seed)
        if self.device.startswith("cuda"):
            torch.cuda.manual_seed_all(seed)
        tok = self.processor.tokenizer
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                num_return_sequences=n,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        decoded = [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
        return [decoded[i * n : (i + 1) * n] for i in range(len(images))]


def weights_digest(directory: str) -> str:
    """12 hex of sha256 over a model directory's weight files (see the module docstring)."""
    files = sorted(
        p for p in Path(directory).rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES
    )
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) under {directory}")
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(directory).as_posix().encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as f:
            if total <= FULL_HASH_BYTES:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            elif p.suffix == ".safetensors":
                (n,) = struct.unpack("<Q", f.read(8))
                h.update(f.read(min(n, 100_000_000)))
            else:  # pickled checkpoints have no header: their first and last MiB
                h.update(f.read(1 << 20))
                f.seek(max(0, p.stat().st_size - (1 << 20)))
                h.update(f.read())
    return h.hexdigest()[:12]


def model_directory(name: str) -> str:
    """A local directory for `name`: tiny-llava's cache, a local dir, or a hub snapshot."""
    if name == TINY_NAME:
        from laion_spark.dpo.tiny_llava import ensure_tiny_llava

        return ensure_tiny_llava()
    path = Path(name.removeprefix("file://")).expanduser()
    if path.is_dir():
        return str(path)
    from huggingface_hub import snapshot_download

    # weights, configs, tokenizer and processor files; hub cache (network once)
    return snapshot_download(
        name,
        allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
    )


def model_name(model: str) -> str:
    """The name part of `model_id`: "tiny-llava", else the hub id's or directory's last part."""
    return TINY_NAME if model == TINY_NAME else model.rstrip("/").rsplit("/", 1)[-1]


def vlm_model_id(gen_cfg: Any) -> str:
    """The `model_id` load_vlm's model records, without loading it (the driver needs only
    the id to find the work left)."""
    return f"{model_name(gen_cfg.model)}@{weights_digest(model_directory(gen_cfg.model))}"


def load_vlm(gen_cfg: Any, device: str | None = None, name: str | None = None) -> LoadedVlm:
    """Load (once per process) the model `gen_cfg.model` names (dpo.generate settings).

    `name` overrides the name part of `model_id`: executors get the directory the driver
    resolved (tiny-llava's cache folder) and must still record the driver's id.
    """
    directory = model_directory(gen_cfg.model)
    dev = resolve_device(device or gen_cfg.device)
    prec = resolve_precision(gen_cfg.precision, dev)
    name = name or model_name(gen_cfg.model)
    key = ("vlm", directory, name, dev, prec, gen_cfg.max_image_pixels)
    return cached(key, lambda: _load(directory, name, dev, prec, gen_cfg.max_image_pixels))


def _load(directory: str, name: str, dev: str, prec: str, max_pixels: int) -> LoadedVlm:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per worker and load amid the stage's line
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(prec, torch.float32)
    model = AutoModelForImageTextToText.from_pretrained(directory, dtype=dtype)
    model.eval().to(dev)
    processor = AutoProcessor.from_pretrained(directory)
    # decoder-only generation pads on the left, so every prompt ends where generation starts
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return LoadedVlm(
        model=model,
        processor=processor,
        device=dev,
        model_id=f"{name}@{weights_digest(directory)}",
        precision=prec,
        max_image_pixels=max_pixels,
    )
