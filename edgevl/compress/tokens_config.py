"""Token-reduction configs for ViT image towers (`--tokens`), parsed and validated without torch.

`--tokens` takes `METHOD:KEY=VALUE,...`:
  tome:r=8                      ToMe: merge r tokens in every layer (bipartite soft matching)
  tome:r=8,schedule=decreasing  r per layer falls linearly from 1.5 r to 0.5 r
  tome:r=auto                   the accuracy gate picks the largest r within --max-drop
  evit:keep=0.7                 EViT: at a quarter, half and three quarters of the depth keep the
                                70 % of patch tokens the class token attends to most, fuse the rest
  evit:keep=auto                the accuracy gate picks the smallest keep within --max-drop
Every count the configs give is a Python int fixed when the tower is patched, so exported graphs
have static token counts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Optional, Union

from edgevl.errors import InputError

METHODS = ("tome", "evit")
SCHEDULES = ("constant", "decreasing")
# The r (ToMe) and keep (EViT) values `auto` bisects over, least reduction first (small r
# values too: a tower with few tokens merges a large share per layer even at r=1).
AUTO_R = (0, 1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32)
AUTO_KEEP = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)
EXAMPLES = "e.g. tome:r=8, tome:r=8,schedule=decreasing, tome:r=auto or evit:keep=0.7"


@dataclass(frozen=True)
class TokenConfig:
    """How many tokens a ViT image tower drops per layer.

    Attributes:
        method: "tome" (merge the r most similar token pairs per layer, size-weighted attention
            afterwards) or "evit" (keep the tokens the class token attends to, fuse the rest into one).
        r: ToMe: tokens merged per layer (0: none); None with `auto`.
        keep: EViT: fraction of patch tokens kept at each reduction layer, in (0, 1]; None with `auto`.
        schedule: ToMe: "constant" (r in every layer) or "decreasing" (1.5 r falling to 0.5 r).
        auto: let the accuracy gate choose r / keep under `--max-drop` (see `tokens_gate`).
    """

    method: str
    r: Optional[int] = None
    keep: Optional[float] = None
    schedule: str = "constant"
    auto: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--tokens method {self.method!r} is unknown; use one of {', '.join(METHODS)} ({EXAMPLES})")
        if self.schedule not in SCHEDULES:
            raise InputError(f"--tokens schedule {self.schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")
        if self.method == "tome":
            if self.keep is not None:
                raise InputError("--tokens tome takes r=N, not keep; keep is evit's (e.g. tome:r=8 or evit:keep=0.7)")
            if not self.auto and (not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 0):
                raise InputError(f"--tokens tome r={self.r!r} must be a whole number >= 0 or auto (e.g. tome:r=8)")
        else:
            if self.r is not None:
                raise InputError("--tokens evit takes keep=F, not r; r is tome's (e.g. evit:keep=0.7 or tome:r=8)")
            if self.schedule != "constant":
                raise InputError("--tokens evit has no schedule (it keeps the same fraction at each reduction layer); drop schedule=")
            if not self.auto and (not isinstance(self.keep, (int, float)) or isinstance(self.keep, bool)
                                  or not 0.0 < self.keep <= 1.0):
                raise InputError(f"--tokens evit keep={self.keep!r} must be a fraction in (0, 1] or auto (e.g. evit:keep=0.7)")

    @property
    def is_identity(self) -> bool:
        """True when the config removes no token (r=0 or keep=1.0)."""
        return not self.auto and (self.r == 0 if self.method == "tome" else self.keep == 1.0)

    def with_value(self, value: Union[int, float]) -> "TokenConfig":
        """The same config with r (tome) or keep (evit) fixed to `value` (what `auto` settles on)."""
        if self.method == "tome":
            return TokenConfig("tome", r=int(value), schedule=self.schedule)
        return TokenConfig("evit", keep=float(value))

    def label(self) -> str:
        """The `--tokens` string that gives this config."""
        if self.method == "tome":
            value = "auto" if self.auto else str(self.r)
            return f"tome:r={value}" + (f",schedule={self.schedule}" if self.schedule != "constant" else "")
        return f"evit:keep={'auto' if self.auto else self.keep}"

    def to_json(self) -> dict:
        data = json.loads(json.dumps(asdict(self)))
        data["type"] = type(self).__name__
        return data


def parse_tokens(text: str) -> TokenConfig:
    """`--tokens` text -> TokenConfig; a bad string raises InputError naming the fix."""
    method, sep, rest = (text or "").strip().partition(":")
    method = method.strip().lower()
    if method not in METHODS:
        raise InputError(f"--tokens {text!r}: method must be one of {', '.join(METHODS)} ({EXAMPLES})")
    if not sep or not rest.strip():
        key = "r" if method == "tome" else "keep"
        raise InputError(f"--tokens {text!r} gives no {key}; {EXAMPLES}")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = (p.strip() for p in item.partition("="))
        if not eq or not key or not value:
            raise InputError(f"--tokens {text!r}: bad item {item!r}; use KEY=VALUE ({EXAMPLES})")
        if key in fields:
            raise InputError(f"--tokens {text!r} gives {key} twice; give it once")
        fields[key] = value
    allowed = ("r", "schedule") if method == "tome" else ("keep",)
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InputError(f"--tokens {method} does not take {', '.join(unknown)}; it takes {', '.join(allowed)} ({EXAMPLES})")
    main = "r" if method == "tome" else "keep"
    if main not in fields:
        raise InputError(f"--tokens {text!r} gives no {main}; {EXAMPLES}")
    value = fields[main]
    if value.lower() == "auto":
        return TokenConfig(method, schedule=fields.get("schedule", "constant"), auto=True)
    if method == "tome":
        if not value.isdigit():
            raise InputError(f"--tokens {text!r}: r={value!r} is not a whole number; give e.g. r=8 or r=auto")
        return TokenConfig("tome", r=int(value), schedule=fields.get("schedule", "constant"))
    try:
        keep = float(value)
    except ValueError:
        raise InputError(f"--tokens {text!r}: keep={value!r} is not a number; give e.g. keep=0.7 or keep=auto") from None
    return TokenConfig("evit", keep=keep)


def as_token_config(tokens: "object") -> Optional[TokenConfig]:
    """A `--tokens` string or a TokenConfig as a TokenConfig (None: no token reduction)."""
    if tokens is None or isinstance(tokens, TokenConfig):
        return tokens
    if isinstance(tokens, str):
        return parse_tokens(tokens)
    raise InputError(f"tokens must be a --tokens string or a TokenConfig, got {type(tokens).__name__}; e.g. 'tome:r=8'")
