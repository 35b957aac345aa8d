"""vaelab.progress: a bar on a terminal, a dozen plain log lines with an ETA elsewhere."""

import logging

import pytest

from vaelab import progress as progress_module
from vaelab.progress import Progress, duration


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "vaelab.progress"]


class _Clock:
    """time.monotonic that advances by ``step`` seconds at each call."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_without_a_terminal_it_logs_each_tenth_with_an_eta_and_the_total_time(caplog, monkeypatch):
    monkeypatch.setattr(progress_module.time, "monotonic", _Clock(1.0))
    caplog.set_level(logging.INFO)
    with Progress(1000, "scoring", "images", tty=False) as bar:
        for _ in range(40):
            bar.update(25)
    lines = _messages(caplog)
    assert len(lines) == 11  # start, 10 % … 90 %, done
    assert lines[0] == "scoring: 1000 images ..."
    # 4 updates (one clock tick each) per tenth; the clock started at 1 s
    assert lines[1] == "scoring: 100/1000 images (10%), 4 s elapsed, about 36 s left"
    assert lines[9] == "scoring: 900/1000 images (90%), 36 s elapsed, about 4 s left"
    assert lines[10] == "scoring: 1000 images in 41 s, 24.39 images/s"


def test_slow_work_logs_at_least_every_30_seconds(caplog, monkeypatch):
    monkeypatch.setattr(progress_module.time, "monotonic", _Clock(40.0))
    caplog.set_level(logging.INFO)
    with Progress(200, "FID", "images", tty=False) as bar:
        for _ in range(5):  # 1 % each: no new tenth, but 40 s per update
            bar.update(2)
    lines = _messages(caplog)
    assert len(lines) == 7
    assert lines[1] == "FID: 2/200 images (1%), 40 s elapsed, about 1 h 06 min left"


def test_on_a_terminal_tqdm_draws_and_only_the_total_is_logged(caplog, capsys):
    caplog.set_level(logging.INFO)
    with Progress(3, "figures", "figures", tty=True) as bar:
        for _ in range(3):
            bar.update()
    err = capsys.readouterr().err
    assert "figures: " in err and "0/3" in err
    lines = _messages(caplog)
    assert len(lines) == 1 and lines[0].startswith("figures: 3 figures in 0 s")


def test_a_failure_inside_logs_no_total(caplog):
    caplog.set_level(logging.INFO)
    with pytest.raises(RuntimeError), Progress(10, "scoring", "images", tty=False) as bar:
        bar.update(5)
        raise RuntimeError("boom")
    lines = _messages(caplog)
    assert len(lines) == 2 and lines[1].startswith("scoring: 5/10 images (50%)")


@pytest.mark.parametrize(
    "seconds,text",
    [(0.4, "0 s"), (59.4, "59 s"), (61, "1 min 01 s"), (3599, "59 min 59 s"), (3725, "1 h 02 min")],
)
def test_durations_read_as_seconds_minutes_or_hours(seconds, text):
    assert duration(seconds) == text
