"""Distillation tensors: the student's inputs and the teacher's embeddings of them.

The teacher's embeddings are computed once per (teacher weights, data, preprocessing, views,
seed) and stored on disk under a sha256 of all of them: MobileCLIP's "reinforced" data set
(Vasu et al., CVPR 2024), so a second run never runs the teacher, and under torchrun only each
node's local rank 0 does (the others read its file). Augmented views are fixed per image (seeded),
which is what makes them cacheable. The file is written under a temporary name unique to the host
and process and renamed into place, so readers never see a partial file, even when several
machines write one shared cache folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from edgevl.distill.sources import HeldOut, Source
from edgevl.errors import InputError
from edgevl.models.spec import ModelSpec
from edgevl.preprocess import PreprocessConfig, preprocess_images

CACHE_VERSION = 1
EVAL_CACHE_VERSION = 1


def imagenet_prompts() -> list[str]:
    """The 1000 ImageNet class prompts ("a photo of a {name}.") in class-index order."""
    from edgevl.models.effnet_minilm import imagenet_class_names

    return [f"a photo of a {name}." for name in imagenet_class_names()]


@dataclass
class DistillData:
    pixels: torch.Tensor  # [views, 3, R, R] student inputs (empty under function matching)
    view_text: torch.Tensor  # [views] index of each view's paired text in `texts`
    teacher_image: torch.Tensor  # [views, D]
    texts: list[str]
    ids: torch.Tensor  # [texts, L]
    mask: torch.Tensor
    teacher_text: torch.Tensor  # [texts, D]
    heldout_pixels: torch.Tensor
    heldout_ids: torch.Tensor  # the class prompts
    heldout_mask: torch.Tensor
    heldout_teacher_image: torch.Tensor
    heldout_teacher_text: torch.Tensor
    heldout_labels: torch.Tensor  # true class per held-out image (-1: unknown)
    cache_path: Path
    cache_hit: bool
    # The training photos themselves and each one's paired text (an index into `texts`):
    # function matching draws fresh views of them every step.
    source_images: list = field(default_factory=list)
    source_text: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    # The held-out images' own captions: tokens, the teacher's embeddings, each image's caption
    # index (-1: none; empty when the held-out set has no captions).
    caption_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 1, dtype=torch.long))
    caption_mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 1, dtype=torch.long))
    teacher_caption: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 1))
    caption_of: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    # The 1000 ImageNet class prompts every evaluation ranks (padding trimmed to the longest) and
    # the teacher's embeddings of them (computed once, cached).
    imagenet_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 1, dtype=torch.long))
    imagenet_mask: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 1, dtype=torch.long))
    teacher_imagenet: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 1))


def student_preprocess(teacher: PreprocessConfig, resolution: int) -> PreprocessConfig:
    """The teacher's preprocessing at the student's resolution (same resize-to-crop ratio)."""
    from dataclasses import replace

    resize = max(resolution, round(resolution * teacher.resize / teacher.crop))
    return replace(teacher, resize=resize, crop=resolution)


def augmented_views(images: list, views: int, seed: int) -> list:
    """`views` views per image: the image itself, then seeded random resized crops (50-100 % of
    the area, aspect 3:4-4:3) mirrored half the time."""
    from PIL import ImageOps

    out = []
    for i, image in enumerate(images):
        out.append(image)
        rng = random.Random(seed * 1_000_003 + i)
        w, h = image.size
        for _ in range(views - 1):
            area = rng.uniform(0.5, 1.0) * w * h
            aspect = rng.uniform(3 / 4, 4 / 3)
            cw, ch = min(w, round((area * aspect) ** 0.5)), min(h, round((area / aspect) ** 0.5))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            view = image.crop((x, y, x + cw, y + ch))
            out.append(ImageOps.mirror(view) if rng.random() < 0.5 else view)
    return out


def text_corpus(source: Source, corpus: str) -> list[str]:
    """Distinct texts, paired ones first; "data+imagenet" adds everyday captions and the 1000
    ImageNet class prompts so the text tower sees more than the data's own labels."""
    texts = list(source.texts) + list(source.extra_texts)
    if corpus == "data+imagenet":
        from edgevl.calibration.datasets import EXTRA_CAPTIONS

        texts += list(EXTRA_CAPTIONS) + imagenet_prompts()
    return list(dict.fromkeys(texts))


def weights_hash(spec: ModelSpec) -> str:
    """sha256 over both towers' state dicts (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for tower in (spec.image, spec.text):
        for name, tensor in sorted(tower.module.state_dict().items()):
            t = tensor.detach().contiguous().cpu()
            digest.update(f"{tower.component}.{name} {t.dtype} {tuple(t.shape)}\n".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def cache_key(teacher: ModelSpec, source: Source, heldout: HeldOut, texts: list[str], views: int, seed: int,
              teacher_hash: Optional[str] = None) -> str:
    record = {
        "version": CACHE_VERSION, "teacher": teacher_hash or weights_hash(teacher), "preprocess": teacher.preprocess.to_json(),
        "files": source.files, "texts": texts, "views": views, "seed": seed,
        "heldout": heldout.files, "prompts": heldout.prompts,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _tokens(spec: ModelSpec, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.tokenize is None:
        raise InputError(f"teacher {spec.name} ships no tokenizer; distillation needs one (tokenizer.json)")
    feeds = spec.tokenize(texts)
    ids = torch.from_numpy(feeds["input_ids"])
    mask = torch.from_numpy(feeds["attention_mask"]) if "attention_mask" in feeds else torch.ones_like(ids)
    return ids, mask


@torch.no_grad()
def _teacher_embeddings(teacher: ModelSpec, images: list, texts: list[str], chunk: int = 32,
                        log: Callable[[str], None] = lambda m: None, what: str = "",
                        every: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher image and text embeddings, `chunk` inputs at a time; a progress line through `log`
    at most every `every` seconds and one at the end (this runs for minutes on a CPU)."""
    total, done, start = len(images) + len(texts), 0, time.perf_counter()
    last = start

    def tick(n: int) -> None:
        nonlocal done, last
        done += n
        now = time.perf_counter()
        if now - last >= every or done == total:
            last = now
            left = (now - start) * (total - done) / done
            log(f"teacher embeddings{what}: {done}/{total} images+texts, {now - start:.0f} s"
                + (f", ~{left:.0f} s left" if done < total else ""))

    image_out, text_out = [torch.zeros(0, 0)], [torch.zeros(0, 0)]  # stay valid when there is nothing to run
    for i in range(0, len(images), chunk):
        pixels = torch.from_numpy(preprocess_images(images[i:i + chunk], teacher.preprocess))
        image_out.append(teacher.image.module(pixel_values=pixels))
        tick(len(pixels))
    feeds = teacher.tokenize(texts)
    for i in range(0, len(texts), chunk):
        text_out.append(teacher.text.module(**{k: torch.from_numpy(v[i:i + chunk]) for k, v in feeds.items()}))
        tick(len(text_out[-1]))
    return torch.cat(image_out[1:] or image_out).float(), torch.cat(text_out[1:] or text_out).float()


def build_data(teacher: ModelSpec, source: Source, heldout: HeldOut, resolution: int, views: int, seed: int,
               corpus: str, cache_dir: Path, log: Callable[[str], None] = lambda m: None,
               run_teacher: bool = True, fixed_views: bool = True) -> DistillData:
    """Every tensor training needs; the teacher runs only when its embeddings are not cached.
    With `run_teacher` False a missing cache file is an error instead (the ranks that wait for
    their node's local rank 0 to write it). With `fixed_views` False (function matching) no
    training view is precomputed: the trainer draws fresh views and runs the teacher on them."""
    from safetensors.torch import load_file

    texts = text_corpus(source, corpus)
    index = {t: i for i, t in enumerate(texts)}
    views = views if fixed_views else 0
    view_images = augmented_views(source.images, views, seed) if views else []
    view_text = torch.tensor([index[t] for t in source.texts for _ in range(views)], dtype=torch.long)
    thash = weights_hash(teacher)
    key = cache_key(teacher, source, heldout, texts, views, seed, teacher_hash=thash)
    path = Path(cache_dir) / "distill" / f"{key}.safetensors"
    hit = path.is_file()
    if hit:
        log(f"teacher embeddings: cache hit {path.name[:16]}")
        cached = load_file(str(path))
    elif not run_teacher:
        raise InputError(f"teacher-embedding cache {path} is missing on this rank although its node's local rank 0 "
                         "wrote it before the barrier; give every process of a node the same EDGEVL_CACHE folder")
    else:
        log(f"teacher embeddings: running the teacher on {len(view_images)} views, {len(texts)} texts, "
            f"{len(heldout.images)} held-out images")
        timg, ttxt = _teacher_embeddings(teacher, view_images, texts, log=log)
        himg, htxt = _teacher_embeddings(teacher, heldout.images, heldout.prompts, log=log, what=" (held out)")
        cached = {"image": timg, "text": ttxt, "heldout_image": himg, "heldout_text": htxt}
        _save(cached, path)
    # The evaluation's other texts (the held-out captions, the 1000 ImageNet prompts): rows of the
    # corpus where it holds them, the rest from a cache of their own (a separate folder, so the
    # training cache stays one file per run).
    prompts = imagenet_prompts()
    wanted = list(dict.fromkeys(list(heldout.captions) + prompts))
    missing = [t for t in wanted if t not in index]
    extra: dict[str, torch.Tensor] = {}
    if missing:
        ekey = hashlib.sha256(json.dumps({"version": EVAL_CACHE_VERSION, "teacher": thash, "texts": missing,
                                          "preprocess": teacher.preprocess.to_json()}, sort_keys=True).encode())
        epath = Path(cache_dir) / "distill-eval" / f"{ekey.hexdigest()}.safetensors"
        if epath.is_file():
            etxt = load_file(str(epath))["text"]
        elif not run_teacher:
            raise InputError(f"evaluation-text cache {epath} is missing on this rank although its node's local rank 0 "
                             "wrote it before the barrier; give every process of a node the same EDGEVL_CACHE folder")
        else:
            _, etxt = _teacher_embeddings(teacher, [], missing, log=log, what=" (evaluation texts)")
            _save({"text": etxt}, epath)
        extra = dict(zip(missing, etxt))

    def teacher_text(rows: list[str]) -> torch.Tensor:
        if not rows:
            return torch.zeros(0, cached["text"].shape[-1])
        return torch.stack([cached["text"][index[t]] if t in index else extra[t] for t in rows])

    pre = student_preprocess(teacher.preprocess, resolution)
    ids, mask = _tokens(teacher, texts)
    hids, hmask = _tokens(teacher, heldout.prompts)
    nids, nmask = _trimmed(*_tokens(teacher, prompts))
    cids, cmask = _trimmed(*_tokens(teacher, list(heldout.captions))) if heldout.captions else (
        torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long))
    return DistillData(
        pixels=(torch.from_numpy(preprocess_images(view_images, pre)) if view_images
                else torch.zeros(0, 3, resolution, resolution)), view_text=view_text,
        teacher_image=cached["image"], texts=texts, ids=ids, mask=mask, teacher_text=cached["text"],
        heldout_pixels=torch.from_numpy(preprocess_images(heldout.images, pre)), heldout_ids=hids,
        heldout_mask=hmask, heldout_teacher_image=cached["heldout_image"],
        heldout_teacher_text=cached["heldout_text"], heldout_labels=torch.tensor(heldout.labels, dtype=torch.long),
        cache_path=path, cache_hit=hit,
        source_images=list(source.images), source_text=torch.tensor([index[t] for t in source.texts], dtype=torch.long),
        caption_ids=cids, caption_mask=cmask, teacher_caption=teacher_text(list(heldout.captions)),
        caption_of=torch.tensor(heldout.caption_of or [-1] * len(heldout.images), dtype=torch.long),
        imagenet_ids=nids, imagenet_mask=nmask, teacher_imagenet=teacher_text(prompts))


def _trimmed(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens cut after the longest text's last token: padded positions are masked out, so this
    changes no embedding, only the work."""
    length = max(1, int(mask.sum(-1).max())) if len(mask) else ids.shape[-1]
    return ids[:, :length].contiguous(), mask[:, :length].contiguous()


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write under a name unique to host and process, then rename: readers never see a partial
    file, and several writers of one shared folder are safe."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def default_cache(cache_dir: Optional[Path]) -> Path:
    from edgevl.models.spec import default_cache_dir

    return Path(cache_dir) if cache_dir else default_cache_dir()


def evaluate(student: torch.nn.Module, data: DistillData, chunk: int = 64, text_chunk: int = 250) -> dict[str, float]:
    """The student against the teacher on the held-out images (never trained on).

    * `imagenet_top1`: how often the student's zero-shot pick over the 1000 ImageNet class
      prompts is the teacher's pick; `imagenet_top5`: how often the teacher's pick is among the
      student's 5 best. `imagenet_text_cosine`: mean cosine of the two text embeddings of those
      prompts. Both models' prompt embeddings are computed once per evaluation (the teacher's
      are cached), then one matrix product ranks every image. `imagenet_top1_image_tower` /
      `imagenet_top1_text_tower`: the same top-1 with one student tower beside the teacher's
      other tower (the teacher's prompt embeddings / the teacher's image embeddings).
    * `agreement`: the same pick agreement over the held-out set's own class prompts (the parity
      photos' labels, or Fashion-MNIST's 10 classes); `student_accuracy`/`teacher_accuracy`:
      how often that pick is the image's true label; `student_caption_accuracy`/
      `teacher_caption_accuracy`: how often an image's own caption is its best match among the
      held-out captions (where the held-out set has captions).
    * `image_cosine` / `text_cosine`: mean cosine to the teacher's embedding of each held-out
      image / held-out class prompt.
    """
    was_training = student.training
    student.eval()

    def text_embeds(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([student.text(ids[i:i + text_chunk], mask[i:i + text_chunk])
                          for i in range(0, len(ids), text_chunk)])

    with torch.no_grad():
        img = torch.cat([student.image(data.heldout_pixels[i:i + chunk])
                         for i in range(0, len(data.heldout_pixels), chunk)])
        txt = student.text(data.heldout_ids, data.heldout_mask)
        net = text_embeds(data.imagenet_ids, data.imagenet_mask) if len(data.imagenet_ids) else None
        cap = text_embeds(data.caption_ids, data.caption_mask) if len(data.caption_ids) else None
    student.train(was_training)
    s_pick = (img @ txt.T).argmax(-1)
    t_img = data.heldout_teacher_image
    t_pick = (t_img @ data.heldout_teacher_text.T).argmax(-1)
    labelled = data.heldout_labels >= 0
    out = {"agreement": float((s_pick == t_pick).float().mean()),
           "image_cosine": float((img * t_img).sum(-1).mean()),
           "text_cosine": float((txt * data.heldout_teacher_text).sum(-1).mean())}
    if net is not None:
        t_net = (t_img @ data.teacher_imagenet.T).argmax(-1)
        s_scores = img @ net.T
        top5 = s_scores.topk(min(5, s_scores.shape[-1]), dim=-1).indices
        out["imagenet_top1"] = float((s_scores.argmax(-1) == t_net).float().mean())
        out["imagenet_top5"] = float((top5 == t_net[:, None]).any(-1).float().mean())
        out["imagenet_text_cosine"] = float((net * data.teacher_imagenet).sum(-1).mean())
        # Each student tower alone beside the teacher's other tower: which one holds agreement back.
        out["imagenet_top1_image_tower"] = float(((img @ data.teacher_imagenet.T).argmax(-1) == t_net).float().mean())
        out["imagenet_top1_text_tower"] = float(((t_img @ net.T).argmax(-1) == t_net).float().mean())
    if bool(labelled.any()):
        labels = data.heldout_labels[labelled]
        out["student_accuracy"] = float((s_pick[labelled] == labels).float().mean())
        out["teacher_accuracy"] = float((t_pick[labelled] == labels).float().mean())
    has_caption = data.caption_of >= 0
    if cap is not None and bool(has_caption.any()):
        own = data.caption_of[has_caption]
        out["student_caption_accuracy"] = float(((img @ cap.T).argmax(-1)[has_caption] == own).float().mean())
        out["teacher_caption_accuracy"] = float(((t_img @ data.teacher_caption.T).argmax(-1)[has_caption]
                                                 == own).float().mean())
    return out
