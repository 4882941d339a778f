"""Progress in a log: occasional single lines (count, fields, ETA), never carriage-return bars."""

from __future__ import annotations

import io

import pytest

from sead.utils.progress import LineProgress, format_duration, progress_bar, progress_mode


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_lines_at_first_update_every_interval_and_at_the_end():
    clock, out = _Clock(), io.StringIO()
    bar = LineProgress(total=10, desc="train", unit="steps", file=out, interval=30, clock=clock)
    for _ in range(10):
        clock.t += 10
        bar.set_postfix({"loss": 0.5})
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    # printed at t=10 (first), t=40, t=70 (30 s apart) and t=100 (done); close adds nothing new
    assert [line.split(" | ")[0] for line in lines] == [
        "[train] 1/10 steps (10%)", "[train] 4/10 steps (40%)", "[train] 7/10 steps (70%)", "[train] 10/10 steps (100%)",
    ]
    assert "\r" not in out.getvalue()
    # at step 4 after 40 s: 10 s per step, 6 steps left
    assert lines[1] == "[train] 4/10 steps (40%) | loss 0.5 | 40s elapsed, ETA 1m00s"
    assert lines[-1].endswith("1m40s elapsed")  # no ETA once done


def test_close_prints_the_last_count_when_unfinished_and_iterables_work():
    clock, out = _Clock(), io.StringIO()
    bar = LineProgress(total=100, desc="gen", file=out, interval=30, clock=clock)
    bar.update(3)
    clock.t += 5
    bar.update(2)
    bar.close()
    assert [line.split(" | ")[0] for line in out.getvalue().splitlines()] == ["[gen] 3/100 it (3%)", "[gen] 5/100 it (5%)"]
    out = io.StringIO()
    assert list(LineProgress(range(4), desc="x", file=out, clock=clock)) == [0, 1, 2, 3]
    assert out.getvalue().splitlines()[-1].startswith("[x] 4/4 it (100%)")


def test_mode_follows_the_stream_and_the_environment(monkeypatch):
    monkeypatch.delenv("SEAD_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines"
    assert progress_mode(_Tty()) == "bar"
    monkeypatch.setenv("SEAD_PROGRESS", "off")
    assert progress_mode(_Tty()) == "off"
    out = io.StringIO()
    bar = progress_bar(total=3, desc="quiet", file=out)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""
    monkeypatch.setenv("SEAD_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="SEAD_PROGRESS"):
        progress_mode(io.StringIO())


def test_progress_bar_is_tqdm_on_a_terminal(monkeypatch):
    monkeypatch.delenv("SEAD_PROGRESS", raising=False)
    from tqdm.auto import tqdm

    bar = progress_bar(total=2, file=_Tty(), desc="t")
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(progress_bar(total=2, file=io.StringIO()), LineProgress)


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (65, "1m05s"), (3600 * 2 + 180, "2h03m")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_train_progress_in_a_log(tmp_path, capsys, monkeypatch):
    """A real (tiny) training run through the callback: single lines with step, loss and pass rate."""
    import torch

    from _tiny import parity_reward, tiny_trainer
    from sead.utils.progress import TrainProgress

    monkeypatch.setenv("SEAD_PROGRESS", "lines")
    torch.set_num_threads(1)
    tr = tiny_trainer(tmp_path, method="opd", max_steps=3, reward_funcs=[parity_reward])
    tr.add_callback(TrainProgress("sead train", interval=0))
    tr.train()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[sead train]")]
    assert [line.split(" | ")[0] for line in lines] == [f"[sead train] {s}/3 steps ({p}%)" for s, p in
                                                        ((1, 33), (2, 67), (3, 100))]
    assert all("loss" in line and "pass_rate" in line for line in lines[1:])
    assert "\r" not in err


def test_no_future_warning_from_the_projects_own_settings(tmp_path):
    """TRL's configs default the deprecated `gradient_checkpointing` to True; sead carries it to the current name,
    and a training step emits no FutureWarning (TRL's own read of `is_gradient_checkpointing` is silenced)."""
    import warnings

    import torch

    from _tiny import tiny_dataset, tiny_model, tokenizer
    from sead.training.config import OPDConfig
    from sead.training.trainer import OPDTrainer

    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = OPDConfig(output_dir=str(tmp_path), method="opd", use_cpu=True, bf16=False, report_to=[], max_steps=1,
                        per_device_train_batch_size=4, max_completion_length=4, disable_tqdm=True, save_strategy="no")
        assert cfg.activation_checkpointing is True and cfg.gradient_checkpointing is True  # TRL's default, kept
        OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(8),
                   processing_class=tokenizer()).train()
    future = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert not future, future
    # a user who sets the deprecated name still gets transformers' own warning
    with pytest.warns(FutureWarning, match="gradient_checkpointing"):
        OPDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], gradient_checkpointing=False)
