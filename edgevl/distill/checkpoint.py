"""Checkpoints and the finished student folder, all safetensors + JSON (no pickle).

A checkpoint is a folder `OUT/checkpoints/step-NNNNNN` (student weights, AdamW state, step and
the config's fingerprint) written under a temporary name and renamed when complete; the file
`OUT/checkpoints/latest` names the newest complete one and is replaced atomically, so an
interrupt at any moment (Ctrl-C included) leaves the last good checkpoint readable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from edgevl.errors import InputError

STUDENT_FILE = "student.json"
WEIGHTS_FILE = "model.safetensors"
KEEP = 2  # complete checkpoints kept (the newest and the one before it)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    state = opt.state_dict()["state"]
    return {f"{i}.{name}": (value if torch.is_tensor(value) else torch.tensor(value)).contiguous()
            for i, entry in state.items() for name, value in entry.items()}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    full = opt.state_dict()
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    full["state"] = state
    opt.load_state_dict(full)


def save_checkpoint(root: Path, step: int, student: torch.nn.Module, opt: torch.optim.Optimizer,
                    fingerprint: str, metrics: list[dict]) -> Path:
    from safetensors.torch import save_file

    ckpts = root / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step-{step:06d}"
    tmp = ckpts / f".step-{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()}, str(tmp / WEIGHTS_FILE))
    save_file(_optimizer_tensors(opt), str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "fingerprint": fingerprint, "metrics": metrics}) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_json(ckpts / "latest.json", {"checkpoint": final.name})
    for old in sorted(p for p in ckpts.glob("step-*") if p.is_dir())[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Optional[Path]:
    pointer = root / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    path = root / "checkpoints" / json.loads(pointer.read_text())["checkpoint"]
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, student: torch.nn.Module, opt: torch.optim.Optimizer,
                    fingerprint: str) -> tuple[int, list[dict]]:
    """Restore weights and optimizer state; returns (next step, metrics so far)."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state["fingerprint"] != fingerprint:
        raise InputError(f"checkpoint {path} was made with other settings (teacher, student, data, losses, steps, "
                         "batch or seed differ); rerun with the same ones, or choose a new --out")
    student.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    _load_optimizer(opt, load_file(str(path / "optimizer.safetensors")))
    return int(state["step"]), list(state.get("metrics", []))


def save_student_folder(out: Path, student: torch.nn.Module, record: dict, teacher_files: tuple[Path, ...],
                        preprocess: "object") -> None:
    """The finished model: weights, architecture + provenance (student.json), preprocessing and
    the teacher's tokenizer files. student.json is written last: its presence marks a complete
    model folder."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{WEIGHTS_FILE}.tmp"
    save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()}, str(tmp))
    os.replace(tmp, out / WEIGHTS_FILE)
    preprocess.save(out / ".preprocess.json.tmp")
    os.replace(out / ".preprocess.json.tmp", out / "preprocess.json")
    for f in teacher_files:
        shutil.copyfile(f, out / f".{f.name}.tmp")
        os.replace(out / f".{f.name}.tmp", out / f.name)
    _write_json(out / STUDENT_FILE, record)


def check_out_dir(out: Path, resume: bool) -> None:
    """A new or empty folder, or (with --resume) one holding this command's checkpoints."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; choose a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / "checkpoints").is_dir() and not (out / STUDENT_FILE).is_file():
        raise InputError(f"--out {out} holds other files; choose a new or empty folder")
    if not resume:
        raise InputError(f"--out {out} holds an earlier distillation; pass --resume to continue it or choose a new folder")
