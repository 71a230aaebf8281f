"""Which model a name or a folder means: a registered name, a folder `edgevl distill` wrote
(student.json, the edgevl-student family) or a Hugging Face checkpoint (the hf-clip adapter).
Core, so the export pipeline and the distillation trainer load models the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgevl.errors import ModelLoadError
from edgevl.models.spec import LoadOptions, ModelSpec
from edgevl.models.quiet import quiet_transformers
from edgevl.registry import MODELS

DEFAULT_MODEL = "effnet-minilm"


def check_model_name(name_or_path: Optional[str]) -> None:
    if name_or_path is None or name_or_path in MODELS.names():
        return
    if not Path(name_or_path).expanduser().exists():
        raise ModelLoadError(
            f"model path {name_or_path} does not exist and is not a registered model "
            f"({', '.join(MODELS.names())}); check the path"
        )


def resolve_model(name_or_path: Optional[str], options: LoadOptions) -> ModelSpec:
    """A registered name (None: the default model), or a folder: one `edgevl distill` wrote or a
    Hugging Face checkpoint. transformers draws no bar and logs no warning while it loads."""
    with quiet_transformers():
        return _resolve_model(name_or_path, options)


def _resolve_model(name_or_path: Optional[str], options: LoadOptions) -> ModelSpec:
    check_model_name(name_or_path)
    if name_or_path is None:
        return MODELS.get(DEFAULT_MODEL)(None, options)
    if name_or_path in MODELS.names():
        return MODELS.get(name_or_path)(None, options)
    if (Path(name_or_path).expanduser() / "student.json").is_file():
        return MODELS.get("edgevl-student")(str(Path(name_or_path).expanduser()), options)
    return MODELS.get("hf-clip")(str(Path(name_or_path).expanduser()), options)
