"""The trainer skeleton (spiritlm.trainer): the loop's schedule, the run-folder rule, recipes by name."""

from __future__ import annotations

import json

import pytest

from spiritlm.errors import UserError
from spiritlm.trainer import LogWindow, Recipe, RunRule, Schedule, resolve_recipe


class Counting(Recipe):
    """A recipe whose steps add their number to the window; it records what the loop called when."""

    name = "counting"
    progress = False

    def __init__(self, schedule: Schedule, step: int = 0, window: dict | None = None) -> None:
        self.schedule, self.step, self.calls = schedule, step, []
        self.window = LogWindow.from_state(window)
        self.resumed = step > 0

    def setup(self) -> None:
        pass

    def train_step(self) -> None:
        self.window.add({"x": float(self.step + 1)})

    def log_train(self) -> None:
        self.calls.append(("log", self.step, self.window.means()["x"]))
        self.window.clear()

    def validate(self) -> None:
        self.calls.append(("val", self.step))

    def save_checkpoint(self) -> None:
        self.calls.append(("save", self.step, self.window.state()))


def test_loop_logs_full_windows_validates_and_saves_on_schedule():
    r = Counting(Schedule(max_steps=5, end=5, log_every=2, val_every=3, save_every=4, validate_first=True))
    r.run()
    assert r.calls == [("val", 0), ("log", 2, 1.5), ("val", 3), ("log", 4, 3.5), ("save", 4, {}),
                       ("log", 5, 5.0), ("val", 5), ("save", 5, {})]


def test_a_stopped_run_keeps_its_partial_window_and_the_resumed_run_logs_the_same_record():
    """Issue 18 item 10: stop after step 3 (log_every 2): no partial record at 3, the checkpoint
    holds step 3's value, and the resumed run's record at 4 is the uninterrupted run's."""
    full = Counting(Schedule(max_steps=4, end=4, log_every=2))
    full.run()
    first = Counting(Schedule(max_steps=4, end=3, log_every=2))
    first.run()
    assert [c for c in first.calls if c[0] == "log"] == [("log", 2, 1.5)]
    saved = first.calls[-1]
    assert saved == ("save", 3, {"x": [3.0]})
    rest = Counting(Schedule(max_steps=4, end=4, log_every=2), step=3, window=json.loads(json.dumps(saved[2])))
    rest.run()
    assert [c for c in rest.calls if c[0] == "log"] == [c for c in full.calls if c[0] == "log" and c[1] > 3] == [("log", 4, 3.5)]


def test_save_at_end_false_saves_only_every_save_every():
    r = Counting(Schedule(max_steps=5, end=5, log_every=5, save_every=2, save_at_end=False))
    r.run()
    assert [c[1] for c in r.calls if c[0] == "save"] == [2, 4]


def test_run_rule_refuses_finished_resumes_same_and_names_a_changed_flag(tmp_path):
    rule = RunRule(what="a trained thing", finished=("model.bin",), record="run.json", resumable=("max_steps",),
                   flags={"weights.a": "--a_weight"}, settings_flags=("lr",), entries=("checkpoints", "run.json", "model.bin"))
    record = {"lr": 0.1, "max_steps": 10, "weights": {"a": 1.0}}
    assert rule.check(tmp_path, record, overwrite=False) is False  # a new folder
    (tmp_path / "run.json").write_text(json.dumps(record))
    assert rule.check(tmp_path, {**record, "max_steps": 20}, overwrite=False) is False  # resumes: max_steps may change
    with pytest.raises(UserError, match=r"run.json: an unfinished run with lr 0.1, this command has 0.2 \(--lr\)"):
        rule.check(tmp_path, {**record, "lr": 0.2}, overwrite=False)
    with pytest.raises(UserError, match=r"weights.a 1.0, this command has 2.0 \(--a_weight\)"):
        rule.check(tmp_path, {**record, "weights": {"a": 2.0}}, overwrite=False)
    assert rule.check(tmp_path, {**record, "lr": 0.2}, overwrite=True) is True  # start over
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match=r"holds a trained thing \(model.bin\); pass --overwrite true"):
        rule.check_finished(tmp_path, overwrite=False)
    (tmp_path / "mine.txt").write_text("kept")
    rule.clear(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_packaged_recipes_resolve_by_name_within_their_trainer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_recipe("vocoder-tiny", "vocoder").endswith("recipes/configs/vocoder-tiny.yaml")
    assert resolve_recipe("tiny-text").endswith("recipes/configs/tiny-text.yaml")
    with pytest.raises(UserError, match=r"vocoder-tiny: no such recipe file \(--config\).*\(base-7b, expressive-7b, tiny-interleaved, tiny-text\)"):
        resolve_recipe("vocoder-tiny")  # the LM's names only
    with pytest.raises(UserError, match=r"tiny-text: no such recipe file \(--preset\).*tokenizer-base"):
        resolve_recipe("tiny-text", "tokenizer", flag="--preset")
