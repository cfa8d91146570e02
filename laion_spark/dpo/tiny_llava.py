"""tiny-llava: the project's own LLaVA-style captioner, built from configs, no download.

A real `LlavaForConditionalGeneration` (CLIP vision tower -> projector -> Llama decoder) with a
word-level tokenizer trained with `tokenizers` on the generated data's vocabulary and a
LlavaProcessor with a chat template, saved with `save_pretrained`: it loads through the same
`AutoModelForImageTextToText` / `AutoProcessor` path as any hub model (models/vlm.py), and
TRL's DPOTrainer takes it as it is.

Trained on generated shape/colour/position scenes (laion_spark.demo.synthetic) for a few
hundred steps, it describes them with mistakes (wrong colour, shape or position): the
hallucinations CLIP-DPO is meant to reduce. `build_tiny_llava(dir, steps=0)` gives an
untrained one in about a second (tests); `ensure_tiny_llava()` trains once per machine and
caches the result at `$LAION_SPARK_CACHE/models/tiny-llava-<VERSION>/` under a file lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from laion_spark.demo.synthetic import BACKGROUNDS, COLORS, POSITIONS, SHAPES, Attributes
from laion_spark.dpo.settings import DEFAULT_TEMPLATES

log = logging.getLogger(__name__)

NAME = "tiny-llava"
VERSION = "v1"  # bump when the architecture, data or recipe changes (part of the cache key)
IMAGE_SIZE = 32
PATCH = 8
TRAIN_SEED = 3_000_017  # far from the seeds tests, demo and the benchmark draw scenes with
STEPS = int(os.environ.get("LAION_SPARK_TINY_LLAVA_STEPS", "400"))

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:"]
# renders {"type": "image"} blocks as <image> (the processor expands it to one token per
# patch) and plain-string contents alike; an assistant turn ends with </s>
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif m['role'] == 'assistant' %}ASSISTANT: "
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# what the captioner is taught to answer, per instruction
INSTRUCTIONS = {
    "short": DEFAULT_TEMPLATES["short"],
    "detailed": DEFAULT_TEMPLATES["detailed"],
    "describe": "Describe the image.",
}
EXTRA_WORDS = "a an the of on in at is and with picture image photo background middle placed there"


def short_caption(attrs: Attributes) -> str:
    pos = "middle" if attrs.position == "center" else attrs.position
    return f"a {attrs.color} {attrs.shape} on the {pos}."


def detailed_caption(attrs: Attributes) -> str:
    return f"{short_caption(attrs)} the background is {attrs.background}."


def answer(kind: str, attrs: Attributes) -> str:
    """The faithful answer to an instruction kind (short -> one sentence, else two)."""
    return short_caption(attrs) if kind == "short" else detailed_caption(attrs)


def corpus() -> list[str]:
    """Every word the tokenizer should know: prompts, attribute words, caption templates."""
    from laion_spark.demo import synthetic

    words = [*COLORS, *SHAPES, *POSITIONS, *BACKGROUNDS, EXTRA_WORDS, *INSTRUCTIONS.values()]
    return [*words, *synthetic._TEMPLATES, *DEFAULT_TEMPLATES.values(), ". , ? ! : ;"]


def build_processor(directory: str | Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # words joined by spaces
    tok.train_from_iterator(corpus(), trainers.WordLevelTrainer(special_tokens=SPECIAL))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=fast,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token the "default" strategy drops
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(str(directory))
    return processor


def build_model(processor: Any, seed: int = 0) -> Any:
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    tok = processor.tokenizer
    # tiny-clip's image tower, layer for layer (so its trained weights load: `init_vision`)
    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=64,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def open_clip_vision_state(visual: dict[str, Any]) -> dict[str, Any]:
    """open_clip VisionTransformer weights (keys without "visual.") as HF CLIPVisionModel's."""
    out = {
        "embeddings.class_embedding": visual["class_embedding"],
        "embeddings.patch_embedding.weight": visual["conv1.weight"],
        "embeddings.position_embedding.weight": visual["positional_embedding"],
        "pre_layrnorm.weight": visual["ln_pre.weight"],
        "pre_layrnorm.bias": visual["ln_pre.bias"],
        "post_layernorm.weight": visual["ln_post.weight"],
        "post_layernorm.bias": visual["ln_post.bias"],
    }
    blocks = sorted(
        {int(k.split(".")[2]) for k in visual if k.startswith("transformer.resblocks.")}
    )
    for i in blocks:
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        q, k, v = visual[src + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = visual[src + "attn.in_proj_bias"].chunk(3)
        for name, w, b in (("q", q, qb), ("k", k, kb), ("v", v, vb)):
            out[f"{dst}self_attn.{name}_proj.weight"] = w
            out[f"{dst}self_attn.{name}_proj.bias"] = b
        pairs = {
            "attn.out_proj": "self_attn.out_proj",
            "ln_1": "layer_norm1",
            "ln_2": "layer_norm2",
            "mlp.c_fc": "mlp.fc1",
            "mlp.c_proj": "mlp.fc2",
        }
        for a, b in pairs.items():
            out[f"{dst}{b}.weight"] = visual[f"{src}{a}.weight"]
            out[f"{dst}{b}.bias"] = visual[f"{src}{a}.bias"]
    return out


def init_vision(model: Any) -> str:
    """Load tiny-clip's trained image tower into the model's vision tower (LLaVA's recipe:
    a contrastively trained image encoder, kept frozen); returns the checkpoint used."""
    import torch

    from laion_spark.models.tiny_clip import ensure_tiny_clip

    ckpt = ensure_tiny_clip()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    tower = model.model.vision_tower
    converted = open_clip_vision_state(visual)
    prefix = (
        "vision_model." if any(k.startswith("vision_model.") for k in tower.state_dict()) else ""
    )
    tower.load_state_dict({prefix + k: v for k, v in converted.items()}, strict=True)
    return ckpt


def training_examples(n: int, seed: int) -> list[tuple[Any, str, str]]:
    """(image, instruction, faithful answer) triples on generated scenes."""
    from laion_spark.demo.synthetic import make_samples

    rng = random.Random(seed)
    out = []
    for s in make_samples(n, seed=seed):
        kind = rng.choice(list(INSTRUCTIONS))
        out.append((s.image(64), INSTRUCTIONS[kind], answer(kind, s.attrs)))
    return out


def encode_examples(processor: Any, examples: list[tuple[Any, str, str]]) -> dict[str, Any]:
    """input_ids / attention_mask / pixel_values / labels (loss on the answer tokens only)."""
    import torch

    tok = processor.tokenizer
    prompts, fulls = [], []
    for _, instruction, text in examples:
        user = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}
        ]
        prompts.append(processor.apply_chat_template(user, add_generation_prompt=True))
        full = [*user, {"role": "assistant", "content": [{"type": "text", "text": text}]}]
        fulls.append(processor.apply_chat_template(full))
    images = [img for img, _, _ in examples]
    tok.padding_side = "right"
    enc = processor(images=images, text=fulls, return_tensors="pt", padding=True)
    prompt_ids = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    prompt_len = prompt_ids["attention_mask"].sum(1)
    labels = enc["input_ids"].clone()
    positions = torch.arange(labels.shape[1])[None, :]
    labels[positions < prompt_len[:, None]] = -100
    labels[enc["attention_mask"] == 0] = -100
    tok.padding_side = "left"
    return {**enc, "labels": labels}


def train(
    model: Any,
    processor: Any,
    steps: int,
    seed: int,
    n: int = 3000,
    batch: int = 48,
    lr: float = 3e-3,
) -> float:
    """Supervised captioning on generated scenes; returns the last loss."""
    import torch

    if steps <= 0:
        return float("nan")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra OpenMP threads only spin on a shared machine
    try:
        data = encode_examples(processor, training_examples(n, seed))
        torch.manual_seed(seed)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps, pct_start=0.1
        )
        model.train()
        loss = torch.tensor(float("nan"))
        for step in range(steps):
            idx = torch.randint(0, len(data["input_ids"]), (batch,))
            out = model(**{k: v[idx] for k, v in data.items()})
            loss = out.loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            if step % 100 == 0:
                log.info("tiny-llava: step %d/%d loss %.3f", step, steps, loss.item())
        model.eval()
        return float(loss.item())
    finally:
        torch.set_num_threads(threads)


def build_tiny_llava(
    directory: str | Path,
    steps: int = 0,
    seed: int = TRAIN_SEED,
    vision_from_clip: bool | None = None,
) -> str:
    """Write a tiny LLaVA (model + processor) to `directory`, trained for `steps` steps.

    `vision_from_clip` (default: when training) starts the vision tower from tiny-clip's
    image tower and keeps it frozen, as LLaVA does with CLIP; otherwise it is random.
    """
    t0 = time.time()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    processor = build_processor(directory)
    model = build_model(processor, seed=seed)
    from_clip = steps > 0 if vision_from_clip is None else vision_from_clip
    if from_clip:
        init_vision(model)
        model.model.vision_tower.requires_grad_(False)
    loss = train(model, processor, steps, seed)
    model.requires_grad_(True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" for one small file
    model.save_pretrained(str(directory))
    meta = {
        "name": NAME,
        "version": VERSION,
        "steps": steps,
        "seed": seed,
        "vision_from_clip": from_clip,
        "final_loss": round(loss, 4) if loss == loss else None,
        "seconds": round(time.time() - t0, 1),
    }
    (directory / "tiny_llava.json").write_text(json.dumps(meta, indent=2))
    return str(directory)


def cache_dir() -> Path:
    from laion_spark.storage import cache_root

    return cache_root() / "models" / f"{NAME}-{VERSION}"


def ensure_tiny_llava() -> str:
    """The cached trained tiny-llava directory, training it first when missing."""
    target = cache_dir()
    marker = target / "tiny_llava.json"
    if marker.is_file():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds it built
        try:
            if not marker.is_file():
                tmp = target.parent / f".{NAME}-{VERSION}.tmp{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                build_tiny_llava(tmp, steps=STEPS)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
                log.info("tiny-llava: trained and cached at %s", target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(target)
