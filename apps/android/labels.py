"""Write labels.json into an edgevl export folder for the Android sample: the labels, the prompts
made from them and their token ids, tokenized here with the export's own tokenizer (the sample
runs no tokenizer on the device; its text tower embeds these ids).

    python apps/android/labels.py EXPORT_DIR cat dog "coffee mug" [--template "a photo of a {}."]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgevl_runtime.errors import RefusedExport
from edgevl_runtime.preprocess import Preprocess
from edgevl_runtime.tokenize import Tokenizer


def label_tokens(export: Path, labels: list[str], template: str) -> dict:
    """labels.json's content: labels, prompts, input_ids and attention_mask (one row per label)."""
    config = Preprocess.load(export / "preprocess.json")
    tokenizer = Tokenizer(export / "tokenizer" / "tokenizer.json", config.context_length, config.pad_token_id)
    prompts = [template.format(label) for label in labels]
    feeds = tokenizer(prompts)
    return {"template": template, "labels": labels, "prompts": prompts,
            "input_ids": feeds["input_ids"].tolist(), "attention_mask": feeds["attention_mask"].tolist()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("labels", nargs="+")
    parser.add_argument("--template", default="a photo of a {}.")
    args = parser.parse_args(argv)
    try:
        content = label_tokens(args.export, args.labels, args.template)
    except RefusedExport as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    (args.export / "labels.json").write_text(json.dumps(content) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
