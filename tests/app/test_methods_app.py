"""The Train screen shows what a preference or reward method is doing (Pilot): DPO's reward
margin and preferred share, GRPO's reward and each reward function, as values and sparklines;
nothing of the kind for SFT. And a GRPO run with the user's reward file asks first."""

from __future__ import annotations

import asyncio

from textual.widgets import Label, Sparkline

from loradeck.engine import config as cfg
from loradeck.tui.app import LoradeckApp
from loradeck.tui.screens.confirm import ConfirmDialog
from loradeck.tui.widgets.method_panel import MethodPanel
from tests.helpers.app import (  # noqa: F401  (an autouse fixture)
    same_on_every_machine,
    small_demo_config,
    training_events,
    wait_for,
    write_run,
)

SIZE = (110, 32)


def with_figures(method: str, figures) -> list[dict]:
    """Training events of ``method`` whose metrics carry ``figures(step)``."""
    events = training_events(steps=8, max_steps=8)
    for ev in events:
        if ev["type"] == "info":
            ev["method"] = method
        if ev["type"] == "metrics" and "loss" in ev:
            ev["figures"] = figures(ev["step"])
    return events


def panel_text(app) -> list[str]:
    panel = app.screen.query_one(MethodPanel)
    return [str(label.content) for label in panel.query(Label) if label.display]


def test_the_train_screen_draws_each_methods_figures(loradeck_home):
    write_run(loradeck_home, "demo-tiny-dpo", with_figures("dpo", lambda s: {
        "rewards/margins": 0.5 * (s - 1), "rewards/accuracies": min(1.0, s / 4),
        "rewards/chosen": 0.1 * s, "rewards/rejected": -0.4 * s}), created=1)
    grpo = with_figures("grpo", lambda s: {
        "reward": 0.1 * s, "reward_std": 0.2, "rewards/exact_answer/mean": 0.05 * s,
        "rewards/exact_answer/std": 0.1, "rewards/regex/mean": 0.5, "kl": 0.01 * s})
    grpo.insert(-3, {"t": grpo[-4]["t"], "type": "samples", "step": 8, "samples": [
        {"prompt": "What is 2 plus 3?", "answer": "5", "reward": 1.5,
         "rewards": {"exact_answer": 1.0, "regex": 0.5}}]})
    write_run(loradeck_home, "demo-tiny-grpo", grpo, created=2)
    write_run(loradeck_home, "demo-tiny-sft", training_events(), created=3)

    async def main():
        app = LoradeckApp(draft=small_demo_config())
        async with app.run_test(size=SIZE) as pilot:
            app.open_run("demo-tiny-dpo")
            await wait_for(pilot, lambda: getattr(app.screen, "drawn", False)
                           and app.screen.run_id == "demo-tiny-dpo", 10, "the DPO run")
            panel = app.screen.query_one(MethodPanel)
            await wait_for(pilot, lambda: panel.display, 5, "the method panel")
            assert panel_text(app) == ["reward margin 3.500", "preferred 1.000"]
            sparks = [s for s in panel.query(Sparkline) if s.display]
            assert list(sparks[0].data) == [0.5 * (s - 1) for s in range(1, 9)]

            app.open_run("demo-tiny-grpo")
            await wait_for(pilot, lambda: app.screen.run_id == "demo-tiny-grpo"
                           and app.screen.drawn and panel_text(app)
                           and panel_text(app)[0].startswith("reward "), 10, "the GRPO run")
            assert panel_text(app) == ["reward 0.800", "exact_answer 0.400", "regex 0.500",
                                       "KL 0.080"]
            samples = str(app.screen.query_one("#train-samples").content)
            assert samples == ("step 8 · Q: What is 2 plus 3? → A: 5  (reward 1.50: "
                               "exact_answer 1.00 regex 0.50)")

            app.open_run("demo-tiny-sft")
            await wait_for(pilot, lambda: app.screen.run_id == "demo-tiny-sft"
                           and app.screen.drawn, 10, "the SFT run")
            await pilot.pause(0.2)
            assert not panel.display

    asyncio.run(main())


def test_the_data_screen_previews_preference_pairs(loradeck_home, tmp_path):
    import json

    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "What is 2 plus 3?", "chosen": "5", "rejected": "I do not know."},
            {"prompt": "Capital of France?", "chosen": " ", "rejected": "Rome"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    draft = cfg.from_overrides(["training.method=dpo", f"dataset.path={path}"],
                               base=small_demo_config())

    async def main():
        app = LoradeckApp(draft=draft)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("d")
            screen = app.screen
            await wait_for(pilot, lambda: screen._inspection is not None, 10, "the preview")
            await pilot.pause(0.2)
            shape = str(screen.query_one("#data-shape").content)
            assert shape.startswith("pairs rows · 2 rows")
            assert "pairs.jsonl:2: 'chosen' is empty" in str(
                screen.query_one("#data-errors").content)
            text = str(screen.query_one("#data-rendered").content)
            assert text == "user: What is 2 plus 3?\nchosen: 5\nrejected: I do not know."
            assert "dpo rows: prompts rendered" in str(screen.query_one("#data-counts").content)

    asyncio.run(main())


def test_a_grpo_draft_with_a_reward_file_asks_before_it_starts(loradeck_home, tmp_path):
    reward = tmp_path / "mine.py"
    reward.write_text("def short(completions, **kw):\n    return [1.0 for _ in completions]\n")
    draft = cfg.from_overrides(["training.method=grpo", f"grpo.rewards=[{reward}:short]"],
                               base=small_demo_config())

    async def main():
        app = LoradeckApp(draft=draft)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("t")
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmDialog), 5, "the ask")
            body = str(app.screen.query_one("#confirm-body").content)
            assert "Run your reward code?" in str(app.screen.query_one("#confirm-title").content)
            assert f"{reward}:short" in body
            await pilot.press("n")
            await pilot.pause(0.2)
            assert app.current_run_id is None  # no: nothing started

    asyncio.run(main())
