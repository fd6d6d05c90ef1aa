"""lr.csv and lr.png: the LR of every update from the schedule, and how the plot shows groups."""

from __future__ import annotations

import pytest

from tests.conftest import compose_config
from trainer.app.build import build_for_preview
from trainer.schedules.curve import PLATEAU_NOTE, draw_lr, lr_columns, lr_rows, read_lr_csv, write_lr_csv
from trainer.schedules.schedule import applied_lrs


def test_rows_follow_the_schedule_and_leave_the_optimizer_alone():
    optimizer, schedule, _ = build_for_preview(compose_config("schedule=onecycle", "trainer.max_steps=20"))
    before = applied_lrs(optimizer)
    rows = lr_rows(optimizer, schedule, 20)
    assert applied_lrs(optimizer) == before
    assert [r["lr/decay"] for r in rows] == pytest.approx([schedule.lr(u) for u in range(20)])
    assert [r["momentum"] for r in rows] == pytest.approx([schedule.momentum(u) for u in range(20)])


def test_identical_group_curves_are_one_curve_named_after_both(tmp_path):
    optimizer, schedule, _ = build_for_preview(compose_config("schedule=cosine", "trainer.max_steps=10"))
    rows = lr_rows(optimizer, schedule, 10)
    assert lr_columns(rows) == [["lr/decay", "lr/no_decay"]]
    scaled = [{**r, "lr/no_decay": r["lr/decay"] / 10} for r in rows]
    assert lr_columns(scaled) == [["lr/decay"], ["lr/no_decay"]]
    write_lr_csv(rows, tmp_path / "lr.csv")
    assert read_lr_csv(tmp_path / "lr.csv") == rows
    draw_lr(rows, tmp_path / "lr.png", title="cosine", note=PLATEAU_NOTE)
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"
