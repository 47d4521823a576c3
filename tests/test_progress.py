"""Progress on the CPU: off a terminal a line at least every minute, on a terminal bars that leave no blank
line and never run into a table."""
import io
import sys

import pytest

import ALP
import utils
from training.hyp import HYP
from utils import progress_meter, say, with_progress

DEVICE = "cpu"


class Clock:
    """time.monotonic that moves `step` seconds at each reading."""

    def __init__(self, step):
        self.now, self.step = 1000.0, step

    def __call__(self):
        self.now += self.step
        return self.now


def test_off_a_terminal_a_loop_says_how_far_it_is_every_20_seconds_or_so_on_cpu(monkeypatch, capsys):
    monkeypatch.setattr(utils.time, "monotonic", Clock(step=15))  # each step takes 15 s
    items = list(with_progress(range(10), 10, "validating epoch 3", bars=False, unit="batch"))
    assert items == list(range(10))
    lines = capsys.readouterr().err.splitlines()
    # a line every second step (30 s apart), none once the loop is done: the caller's own line follows
    assert len(lines) == 4
    assert lines[0].startswith("validating epoch 3: 2/10 batch (20%) in 30 s") and "left" in lines[0]


def test_progress_lines_carry_the_running_figures_and_the_time_left_on_cpu(monkeypatch, capsys):
    monkeypatch.setattr(utils.time, "monotonic", Clock(step=40))
    meter = progress_meter(4, "PGD-50 (linf 0.3)", bars=False, unit="img")
    meter.update(1)
    meter.set_postfix(robust="75.00%")
    meter.update(1)
    meter.close()
    first, second = capsys.readouterr().err.splitlines()
    assert first == "PGD-50 (linf 0.3): 1/4 img (25%) in 40 s, about 2.0 min left"
    assert second.endswith("; robust 75.00%")


def test_no_progress_at_all_where_bars_is_none_on_cpu(monkeypatch, capsys):
    monkeypatch.setattr(utils.time, "monotonic", Clock(step=100))
    list(with_progress(range(5), 5, "x", bars=None))
    assert capsys.readouterr().err == ""


def test_a_bar_on_a_terminal_without_a_window_size_is_drawn_and_leaves_no_blank_line_on_cpu(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(utils.os, "get_terminal_size", lambda fd: utils.os.terminal_size((0, 0)))
    list(with_progress(range(3), 3, "epoch 1", bars=True))
    text = screen.getvalue()
    assert "epoch 1" in text and "|" in text  # drawn at 80 columns, not at 0
    assert "\n" not in text  # cleared when done: no line of its own is left


def test_a_table_printed_while_a_bar_runs_starts_on_its_own_line_on_cpu(monkeypatch):
    """stdout and stderr on one terminal: the table's header must not follow the bar's last characters."""
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(sys, "stdout", screen)
    meter = progress_meter(10, "FGSM (linf 0.3)", bars=True, unit="img")
    meter.update(4)
    say("| ℓ∞ | leverage |")
    meter.close()
    before = screen.getvalue().split("| ℓ∞ | leverage |")[0]
    assert "FGSM" in before and before.endswith(("\r", "\n"))


@pytest.mark.slow
def test_alp_off_a_terminal_reports_training_and_validation_progress_on_cpu(monkeypatch, capsys, tmp_path,
                                                                          synthetic_mnist_root, cheap_validation):
    """Every step past the interval gets its line: here every step, so that a short run shows both loops."""
    monkeypatch.setattr(utils, "PROGRESS_LINE_SECONDS", 0)
    monkeypatch.setitem(HYP["validation_batch"], "cpu", 5)  # 4 validation batches, not 1
    ALP.main(["mnist", "mnist", f"--device={DEVICE}", "-b=5", "--steps=1", "--epochs=1", "--subset=20",
              "--no-progress", "--data-root", str(synthetic_mnist_root), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "epoch 1: 1/4 batch (25%) in " in err
    assert "validating epoch 1: 1/4 batch (25%) in " in err
