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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from edgevl.distill.sources import HeldOut, Source
from edgevl.errors import InputError
from edgevl.models.spec import ModelSpec
from edgevl.preprocess import PreprocessConfig, preprocess_images

CACHE_VERSION = 1


@dataclass
class DistillData:
    pixels: torch.Tensor  # [views, 3, R, R] student inputs
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
        from edgevl.models.effnet_minilm import imagenet_class_names

        texts += list(EXTRA_CAPTIONS) + [f"a photo of a {name}." for name in imagenet_class_names()]
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


def cache_key(teacher: ModelSpec, source: Source, heldout: HeldOut, texts: list[str], views: int, seed: int) -> str:
    record = {
        "version": CACHE_VERSION, "teacher": weights_hash(teacher), "preprocess": teacher.preprocess.to_json(),
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

    image_out, text_out = [], []
    for i in range(0, len(images), chunk):
        pixels = torch.from_numpy(preprocess_images(images[i:i + chunk], teacher.preprocess))
        image_out.append(teacher.image.module(pixel_values=pixels))
        tick(len(pixels))
    feeds = teacher.tokenize(texts)
    for i in range(0, len(texts), chunk):
        text_out.append(teacher.text.module(**{k: torch.from_numpy(v[i:i + chunk]) for k, v in feeds.items()}))
        tick(len(text_out[-1]))
    return torch.cat(image_out).float(), torch.cat(text_out).float()


def build_data(teacher: ModelSpec, source: Source, heldout: HeldOut, resolution: int, views: int, seed: int,
               corpus: str, cache_dir: Path, log: Callable[[str], None] = lambda m: None,
               run_teacher: bool = True) -> DistillData:
    """Every tensor training needs; the teacher runs only when its embeddings are not cached.
    With `run_teacher` False a missing cache file is an error instead (the ranks that wait for
    their node's local rank 0 to write it)."""
    from safetensors.torch import load_file, save_file

    texts = text_corpus(source, corpus)
    index = {t: i for i, t in enumerate(texts)}
    view_images = augmented_views(source.images, views, seed)
    view_text = torch.tensor([index[t] for t in source.texts for _ in range(views)], dtype=torch.long)
    key = cache_key(teacher, source, heldout, texts, views, seed)
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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        save_file({k: v.contiguous() for k, v in cached.items()}, str(tmp))
        os.replace(tmp, path)
    pre = student_preprocess(teacher.preprocess, resolution)
    ids, mask = _tokens(teacher, texts)
    hids, hmask = _tokens(teacher, heldout.prompts)
    return DistillData(
        pixels=torch.from_numpy(preprocess_images(view_images, pre)), view_text=view_text,
        teacher_image=cached["image"], texts=texts, ids=ids, mask=mask, teacher_text=cached["text"],
        heldout_pixels=torch.from_numpy(preprocess_images(heldout.images, pre)), heldout_ids=hids,
        heldout_mask=hmask, heldout_teacher_image=cached["heldout_image"],
        heldout_teacher_text=cached["heldout_text"], heldout_labels=torch.tensor(heldout.labels, dtype=torch.long),
        cache_path=path, cache_hit=hit)


def default_cache(cache_dir: Optional[Path]) -> Path:
    from edgevl.models.spec import default_cache_dir

    return Path(cache_dir) if cache_dir else default_cache_dir()


def evaluate(student: torch.nn.Module, data: DistillData, chunk: int = 64) -> dict[str, float]:
    """Student-teacher zero-shot top-1 agreement over the held-out class prompts, mean
    image-embedding cosine to the teacher, and both models' accuracy where labels are known."""
    was_training = student.training
    student.eval()
    with torch.no_grad():
        img = torch.cat([student.image(data.heldout_pixels[i:i + chunk])
                         for i in range(0, len(data.heldout_pixels), chunk)])
        txt = student.text(data.heldout_ids, data.heldout_mask)
    student.train(was_training)
    s_pick = (img @ txt.T).argmax(-1)
    t_pick = (data.heldout_teacher_image @ data.heldout_teacher_text.T).argmax(-1)
    labelled = data.heldout_labels >= 0
    out = {"agreement": float((s_pick == t_pick).float().mean()),
           "image_cosine": float((img * data.heldout_teacher_image).sum(-1).mean()),
           "text_cosine": float((txt * data.heldout_teacher_text).sum(-1).mean())}
    if bool(labelled.any()):
        labels = data.heldout_labels[labelled]
        out["student_accuracy"] = float((s_pick[labelled] == labels).float().mean())
        out["teacher_accuracy"] = float((t_pick[labelled] == labels).float().mean())
    return out
