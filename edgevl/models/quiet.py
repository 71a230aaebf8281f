"""transformers kept quiet while edgevl drives it: its "Loading weights" bar and its warnings (such
as `loss_type=None`, logged when a converter walks a model's attributes) are not edgevl's output.

Libraries transformers imports while it loads a checkpoint are quieted too: with ExecuTorch
installed, transformers' quantizer registry imports torchao, which logs a warning for each CUDA
kernel library it cannot load on a CPU machine, and torch's pytree logs a deprecation for each
enum torchao registers; neither concerns the model being loaded.

Only inside the block: the caller's verbosity and progress-bar settings are restored afterwards, so
a program that embeds edgevl keeps its own. (A `warning_once` silenced here stays silenced, as
transformers remembers it was issued.)
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

# Loggers of libraries imported during a checkpoint load, raised to ERROR inside the block.
IMPORT_TIME_LOGGERS = ("torchao", "torch.utils._pytree")


def _hidden_bar(factory, args, kwargs):  # noqa: ANN001, ANN202 - transformers' tqdm hook signature
    return factory(*args, **{**kwargs, "disable": True})


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers logs ERROR and above only, and draws no progress bar, inside the block."""
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:  # nothing to quiet
        yield
        return
    loggers = [logging.getLogger(name) for name in IMPORT_TIME_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    verbosity = tf_logging.get_verbosity()
    tf_logging.set_verbosity(tf_logging.ERROR)
    # Where transformers has `set_tqdm_hook` (5.25 has it, 5.0 not) a hook hides the bars and the
    # previous hook comes back; otherwise the global switch is flipped and restored.
    set_hook = getattr(tf_logging, "set_tqdm_hook", None)
    if set_hook is not None:
        previous_hook = set_hook(_hidden_bar)
    else:
        bars = tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        tf_logging.set_verbosity(verbosity)
        if set_hook is not None:
            set_hook(previous_hook)
        elif bars:
            tf_logging.enable_progress_bar()
