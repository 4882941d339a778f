"""Progress that reads well on a terminal and in a log.

On a terminal, a tqdm bar. When the stream is not a terminal (CI, ``nohup``, a cluster job's stdout piped
to a file), a carriage-return bar writes every update onto one line thousands of characters long; there
:func:`progress_bar` prints instead a short line now and then::

    [sead train] 40/200 steps (20%) | loss 0.0412 | pass_rate 0.58 | 1m12s elapsed, ETA 4m48s

``SEAD_PROGRESS=bar|lines|off`` overrides the choice (``bar`` on a terminal, ``lines`` elsewhere).
:class:`TrainProgress` is the training loop's callback: the same, per optimizer step, with the latest
loss and rollout pass rate.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from transformers import TrainerCallback

__all__ = [
    "LineProgress", "TrainProgress", "format_duration", "progress_bar", "progress_mode", "quiet_library_bars_in_logs",
]

#: Seconds between two lines of :class:`LineProgress` (the first and the last update always print).
LINE_INTERVAL = 30.0
MODES = ("bar", "lines", "off")


def progress_mode(file: TextIO | None = None) -> str:
    """``bar`` on a terminal, ``lines`` elsewhere; ``SEAD_PROGRESS`` overrides (``bar``, ``lines``, ``off``)."""
    forced = os.environ.get("SEAD_PROGRESS", "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"SEAD_PROGRESS must be one of {', '.join(MODES)}; got {forced!r}")
        return forced
    stream = file if file is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # closed or unusual streams
        return "lines"


def format_duration(seconds: float) -> str:
    """``59s``, ``1m05s``, ``2h03m``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class LineProgress:
    """The part of tqdm's interface sead uses, printed as occasional single lines.

    A line is printed at the first update, then at most every ``interval`` seconds, and when the work is
    done (``n == total``) or the bar is closed; each line carries the count, the percentage, the postfix
    fields, the elapsed time and an ETA from the mean rate so far.
    """

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: int | None = None,
        desc: str | None = None,
        unit: str = "it",
        disable: bool = False,
        file: TextIO | None = None,
        interval: float = LINE_INTERVAL,
        clock=time.monotonic,
        initial: int = 0,
        **_ignored: Any,
    ):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.disable = total, desc or "", unit, disable
        self.file, self.interval, self.clock = file, float(interval), clock
        self.n = int(initial)
        self.postfix: dict[str, Any] = {}
        self.start = clock()
        self._last_print: float | None = None
        self._printed_n = -1
        self._closed = False

    # -- tqdm API ---------------------------------------------------------------------------------
    def __iter__(self):
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        done = self.total is not None and self.n >= self.total
        if self._last_print is None or done or now - self._last_print >= self.interval:
            self._print(now)

    def set_postfix(self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = {**dict(ordered_dict or {}), **kwargs}

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def write(self, text: str) -> None:
        if not self.disable:
            print(text, file=self.file or sys.stderr, flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != self._printed_n and self.n > 0:
            self._print(self.clock())

    # -- the line ---------------------------------------------------------------------------------
    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        elapsed = now - self.start
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"[{self.desc}] {count} {self.unit}" if self.desc else f"{count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        parts += [f"{k} {_fmt(v)}" for k, v in self.postfix.items()]
        timing = f"{format_duration(elapsed)} elapsed"
        if self.total and 0 < self.n < self.total:
            timing += f", ETA {format_duration(elapsed / self.n * (self.total - self.n))}"
        parts.append(timing)
        return " | ".join(parts)

    def _print(self, now: float) -> None:
        self._last_print, self._printed_n = now, self.n
        if not self.disable:
            print(self.line(now), file=self.file or sys.stderr, flush=True)


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere (see :func:`progress_mode`); same arguments
    as ``tqdm`` (``total``, ``desc``, ``unit``, ``disable``, ``leave``, ``file``)."""
    mode = progress_mode(kwargs.get("file"))
    if mode == "off":
        kwargs["disable"] = True
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)


class TrainProgress(TrainerCallback):
    """Per optimizer step: a bar (terminal) or occasional lines (logs) with the latest loss and pass rate.

    Replaces transformers' ``ProgressCallback`` (whose bar floods a log) when the stream is not a terminal;
    the demo uses it in both modes for its compact one-bar-per-run display.
    """

    SHOWN = (("loss", "loss"), ("rollout/pass_rate", "pass_rate"), ("curriculum/gate", "gate"))

    def __init__(self, desc: str = "train", enabled: bool = True, leave: bool = False, **bar_kwargs: Any):
        self.desc, self.enabled, self.leave, self.bar_kwargs, self.bar = desc, enabled, leave, bar_kwargs, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = progress_bar(
                total=state.max_steps, desc=self.desc, unit="steps", disable=not self.enabled, leave=self.leave,
                initial=state.global_step, **self.bar_kwargs,
            )  # fmt: skip

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            shown = {name: logs[key] for key, name in self.SHOWN if key in logs}
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def quiet_library_bars_in_logs() -> bool:
    """When progress is not a terminal bar (:func:`progress_mode`), turn off the tqdm bars of the libraries sead
    drives (datasets' ``Map``, transformers' weight loading and saving, the hub's), which would write their
    carriage-return updates into the log; sead's own progress stays, as lines. Returns whether it did."""
    if progress_mode() == "bar":
        return False
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    return True


def note(message: str, file: TextIO | None = None) -> None:
    """One line ``sead: message`` on stderr, from the first process only (``RANK`` / ``LOCAL_RANK`` unset or 0):
    what sead decided for the user (a default it picked, a limit it applied), not a warning."""
    if os.environ.get("RANK", "0") != "0" or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    print(f"sead: {message}", file=file or sys.stderr, flush=True)
