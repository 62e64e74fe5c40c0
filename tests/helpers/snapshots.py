"""What the screens' snapshot tests (tests/app/snapshots) and the app tests share: terminal
sizes, waiting for a screen to settle before a snapshot, and the runs and chats they show."""

from __future__ import annotations

from pathlib import Path

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.serve.replies import Finished
from tests.helpers.app import (
    copy_run,
    no_blink,
    settle,
    small_demo_config,
    training_events,
    wait_for,
    write_run,
)

SMALL = (80, 24)
SIZE = (100, 32)
FINISHED_RUN_ID = "demo-tiny-finished"
KOREAN_PROMPT = "한국의 수도는 어디인가요? 그리고 그 도시의 역사를 짧게 설명해 주세요."
KOREAN_REPLY = ("서울은 대한민국의 수도입니다. 조선 왕조가 1394년에 한양으로 도읍을 옮긴 뒤로 "
                "600년이 넘도록 나라의 중심이었고, 지금은 약 천만 명이 사는 **대도시**입니다.\n\n"
                "- 경복궁과 창덕궁 같은 궁궐\n- 한강을 따라 이어진 공원")
BASE_REPLY = "서울입니다. Seoul is the capital of South Korea."


def ready_after(*keys: str, run_loaded: bool = False):
    async def ready(pilot) -> None:
        await settle(pilot)
        if keys:
            await pilot.press(*keys)
            await settle(pilot)
        if run_loaded:
            await wait_for(pilot, lambda: getattr(pilot.app.screen, "loaded", False), 10,
                           "the runs")
        no_blink(pilot.app)
        await pilot.pause(0.3)
    return ready


def go(*keys: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        if keys:
            await pilot.press(*keys)
            await settle(pilot)
    return run_before


def snap_app(**kw):
    from loradeck.tui.app import LoradeckApp

    return LoradeckApp(draft=small_demo_config(), **kw)


async def conversation(screen, turns: int) -> None:
    pane = screen.query_one("#pane-tuned")
    for i in range(turns):
        question = f"question {i + 1}: what is the capital of Korea?"
        await pane.add_user(question)
        reply = await pane.add_reply(f"answer {i + 1}: Seoul.\n\nIt has been the capital since "
                                     "1394.")
        reply.record(f"answer {i + 1}: Seoul.")
        reply.finish(Finished(f"c{i}", ttft_s=0.21, tokens_per_second=38.4, tokens=9))
        pane.answered(question, reply)  # the turn joins the pane's conversation


def runs_of_every_kind(home):
    write_run(home, "demo-tiny-a-done", training_events(steps=12, max_steps=12), created=1)
    write_run(home, "demo-tiny-b-failed", training_events(steps=5, max_steps=12, end="failed"),
              created=2)
    write_run(home, "demo-tiny-c-stopped",
              training_events(steps=6, max_steps=12, end="stopped"), created=3)
    write_run(home, "demo-tiny-d-running", training_events(steps=3, max_steps=12, end=None),
              alive=True, created=4)


def two_runs(home):
    a = cfg.from_overrides(["lora.r=8", "training.learning_rate=0.001"], base=cfg.demo_config())
    b = cfg.from_overrides(["lora.r=16", "training.learning_rate=0.002"],
                           base=cfg.demo_config())
    ev_b = training_events(steps=12, max_steps=12)
    for e in ev_b:
        if e["type"] == "metrics" and e.get("loss") is not None:
            e["loss"] = round(e["loss"] - 0.5, 4)
            e["tokens_per_second"] = 900.0
    write_run(home, "run-a-r8", training_events(steps=12, max_steps=12), config=a, created=1)
    write_run(home, "run-b-r16", ev_b, config=b, created=2)


@pytest.fixture(scope="module")
def finished_run_dir(tmp_path_factory, demo_model):
    """A finished demo run (real LoRA adapter), built once for this module."""
    from tests.helpers.run_fixtures import make_finished_run

    return make_finished_run(root=tmp_path_factory.mktemp("finished-runs")).dir


@pytest.fixture
def finished_run(finished_run_dir, loradeck_home):
    """That run, copied into this test's store under a fixed id."""
    return copy_run(finished_run_dir, loradeck_home, FINISHED_RUN_ID)


def saved_eval(run_dir) -> Path:
    """A fixed evaluation of the run (base, adapter and two checkpoints on three rows), saved
    as ``loradeck eval`` saves one."""
    from loradeck.engine.evals import report

    rows = [{"where": f"demo row {i}", "prompt": p, "reference": r}
            for i, (p, r) in enumerate((("What is the capital of France?",
                                         "The capital of France is Paris."),
                                        ("한국의 수도는 어디인가요?", "한국의 수도는 서울입니다."),
                                        ("What colour is the sky?", "The sky is blue.")))]
    answers = {"base": ["Paris Paris Paris Paris", "수도 수도 수도", "blue blue"],
               "adapter": ["The capital of France is Paris.", "한국의 수도는 서울입니다.",
                           "The sky is blue."],
               "checkpoint-20": ["The capital is Paris.", "한국의 수도는 서울", "The sky."],
               "checkpoint-40": ["The capital of France is Paris.", "한국의 수도는 서울입니다.",
                                 "The sky is blue."]}
    scores = {"base": (12.5, 0.2, 0.0, 2.91, 24.0, 0.0), "adapter": (96.1, 0.93, 1.0, 0.42, 9.3, 1.0),
              "checkpoint-20": (61.0, 0.55, 0.0, 1.37, 6.0, 0.67),
              "checkpoint-40": (96.1, 0.93, 1.0, 0.42, 9.3, 1.0)}
    result = report.EvalResult(run=Path(run_dir).name, time="20261206-120000",
                               source="held-out eval rows", rows=rows, max_new_tokens=64)
    for name, (chrf, rouge, exact, loss, tokens, eot) in scores.items():
        result.models.append({"name": name, "scores": {
            "chrf": chrf, "bleu": round(chrf * 0.8, 1), "rouge_l": rouge, "exact": exact,
            "loss": loss, "answer_tokens": tokens, "end_of_turn": eot}})
        result.answers[name] = [{"text": t, "tokens": len(t.split()) + 2, "stopped": True}
                                for t in answers[name]]
    result.best_checkpoint = {"name": "checkpoint-40", "step": 40, "metric": "chrf",
                              "value": 96.1}
    return report.save(run_dir, result)
