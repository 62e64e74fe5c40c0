"""Events are typed: each type is a class, and the writer refuses what its type does not
allow, before anything reaches the file. Every reader folds them in one place (RunState)."""

from __future__ import annotations

import pytest

from loradeck.engine.runs.events import EVENT_TYPES, EventError, EventWriter, NullEvents
from loradeck.engine.runs.state import ENDED_UNSAID, fold


@pytest.mark.parametrize("events", [EventWriter, NullEvents])
def test_a_bad_event_is_refused_when_written(tmp_path, events):
    path = tmp_path / "events.jsonl"
    writer = events(path) if events is EventWriter else events()
    bad = [(("metric",), {"step": 1}, "unknown event type 'metric'"),
           (("metrics",), {"step": 1, "los": 2.0}, "metrics has no field 'los'"),
           (("metrics",), {"loss": 2.0}, "metrics lacks step"),
           (("metrics",), {"step": "3"}, "metrics step must be a whole number"),
           (("status",), {"phase": "runing", "message": ""}, "unknown phase 'runing'"),
           (("error",), {"kind": "boom", "message": "m", "hint": ""}, "unknown error kind"),
           (("checkpoint",), {"step": 2}, "checkpoint lacks path")]
    for args, fields, said in bad:
        with pytest.raises(EventError, match=said):
            writer.emit(*args, **fields)
    assert not path.exists()  # nothing reached the file
    writer.emit("metrics", step=1, loss=2.0)
    writer.status("training", "go")
    if events is EventWriter:
        assert [e["type"] for e in fold_file(path)] == ["metrics", "status"]


def fold_file(path):
    from loradeck.engine.runs.events import read_events

    return read_events(path)


def test_every_type_is_a_class_with_its_fields():
    assert set(EVENT_TYPES) == {"status", "info", "metrics", "log", "checkpoint", "error",
                                "done", "samples", "system", "eval"}
    assert EVENT_TYPES["status"].required == ("phase", "message")


def test_one_fold_carries_the_series_checkpoints_and_the_phase_before_a_merge():
    events = [{"t": 1, "type": "status", "phase": "training", "message": ""},
              {"t": 2, "type": "metrics", "step": 2, "loss": 3.0, "learning_rate": 1e-3,
               "tokens_per_second": 100.0, "memory_gb": 1.5},
              {"t": 3, "type": "checkpoint", "step": 2, "path": "c2"},
              {"t": 4, "type": "metrics", "step": 2, "eval_loss": 3.5, "memory_gb": 2.0},
              {"t": 5, "type": "metrics", "step": 2, "loss": 2.9},  # a resume logs it again
              {"t": 6, "type": "done", "adapter": "a"},
              {"t": 7, "type": "status", "phase": "done", "message": "finished"},
              {"t": 8, "type": "status", "phase": "merging", "message": ""}]
    state = fold(events)
    assert state.train_losses == {2: 2.9} and state.eval_losses == {2: 3.5}
    assert state.learning_rates == {2: 1e-3} and state.checkpoints == [2]
    assert state.speeds == [100.0] and state.peak_memory_gb == 2.0
    assert state.restore_phase() == "done"
    assert state.reads_as(alive=True)[0] == "merging"
    phase, message, interrupted = state.reads_as(alive=False)
    assert phase == "done" and "merge ended without a final status" in message
    assert not interrupted
    killed = fold(events[:2])
    assert killed.reads_as(alive=False) == ("failed", ENDED_UNSAID, True)


def test_the_readers_use_the_fold(tmp_path):
    """compare, the model card and the Train view give the same series as RunState."""
    from loradeck.engine.publish.model_card import loss_history
    from loradeck.engine.runs import compare
    from loradeck.engine.runs.store import Run
    from loradeck.tui.run_view import RunView

    events = [{"t": 1, "type": "metrics", "step": s, "loss": 5.0 - s, "eval_loss": None}
              for s in (1, 2, 3)] + [{"t": 2, "type": "metrics", "step": 3, "eval_loss": 4.0}]
    state = fold(events)
    run = Run(tmp_path / "r")
    figures = compare.figures(run, events)
    assert figures.train == sorted(state.train_losses.items())
    assert figures.eval == [(3, 4.0)]
    assert [(p.step, p.train, p.eval) for p in loss_history(events)] == [
        (1, 4.0, None), (2, 3.0, None), (3, 2.0, 4.0)]
    view = RunView()
    view.feed(events)
    assert view.train_series() == [4.0, 3.0, 2.0] and view.rows[3].eval_loss == 4.0
    assert view.display_phase(alive=False) == "failed"
