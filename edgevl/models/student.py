"""`edgevl-student`: a folder written by `edgevl distill` (student.json + model.safetensors +
preprocess.json + the teacher's tokenizer files), loaded as a ModelSpec like any other family.
No pickle and no teacher are needed: student.json describes the architecture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from edgevl.errors import InputError, ModelLoadError
from edgevl.models.spec import LoadOptions, ModelSpec, TensorSig, TowerSpec, existing_files
from edgevl.preprocess import PreprocessConfig
from edgevl.registry import register_model

NAME = "edgevl-student"
STUDENT_FILE = "student.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def is_student_folder(path: Path) -> bool:
    return (Path(path) / STUDENT_FILE).is_file()


def _record(folder: Path) -> dict:
    path = folder / STUDENT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} cannot be read as JSON ({exc}); rerun edgevl distill") from exc
    if not isinstance(record, dict) or record.get("format") != NAME:
        raise ModelLoadError(f"{path} is not an edgevl student record (format {NAME!r}); rerun edgevl distill")
    for name in ("model.safetensors", "preprocess.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise ModelLoadError(f"{folder} lacks {name}; the distillation did not finish: rerun it with --resume")
    return record


@register_model(NAME)
def load_student(source: Optional[str], options: LoadOptions) -> ModelSpec:
    import torch
    from safetensors.torch import load_file

    from edgevl.distill.students import StudentPair, arch_from_json, build_tower
    from edgevl.tokenize import TextTokenizer

    if source is None:
        raise InputError(f"model {NAME!r} needs a folder written by edgevl distill: edgevl export PATH ...")
    folder = Path(source).expanduser()
    record = _record(folder)
    image_arch, text_arch = arch_from_json(record["image"]), arch_from_json(record["text"])
    student = StudentPair(build_tower(image_arch), build_tower(text_arch))
    try:
        student.load_state_dict(load_file(str(folder / "model.safetensors")))
    except RuntimeError as exc:
        raise ModelLoadError(f"{folder / 'model.safetensors'} does not match {STUDENT_FILE}: "
                             f"{str(exc).splitlines()[0]}; rerun edgevl distill") from exc
    student.eval()
    preprocess = PreprocessConfig.load(folder / "preprocess.json")
    tokenize = TextTokenizer(folder / "tokenizer.json", preprocess.context_length, preprocess.pad_token_id,
                             preprocess.text_inputs)
    size = preprocess.crop
    gen = torch.Generator().manual_seed(0)
    image = TowerSpec(
        component="image", module=student.image,
        inputs=(TensorSig("pixel_values", "float32", ("batch", 3, size, size)),),
        output=TensorSig("image_embeds", "float32", ("batch", "dim")),
        example_inputs={"pixel_values": torch.randn(2, 3, size, size, generator=gen)},
    )
    feeds = tokenize(["a photo of a cat.", "a cup of coffee on a saucer with a spoon"])
    text = TowerSpec(
        component="text", module=student.text,
        inputs=tuple(TensorSig(n, "int64", ("batch", "seq")) for n in preprocess.text_inputs),
        output=TensorSig("text_embeds", "float32", ("batch", "dim")),
        example_inputs={k: torch.from_numpy(v) for k, v in feeds.items()},
    )
    last = record.get("metrics", [{}])[-1] if record.get("metrics") else {}
    return ModelSpec(
        name=folder.name, source=str(folder.resolve()), image=image, text=text, preprocess=preprocess,
        tokenize=tokenize, tokenizer_files=existing_files(folder, TOKENIZER_FILES),
        vocab_size=int(record.get("vocab_size") or text_arch.vocab),
        special_token_ids={k: int(v) for k, v in (record.get("special_token_ids") or {}).items()},
        notes=(f"distilled by edgevl from {record.get('teacher')}: {image_arch.kind} image student, "
               f"{text_arch.depth}-layer text student",
               f"held-out agreement with the teacher at the end of training: {last.get('agreement', float('nan')):.3f}"),
    )
