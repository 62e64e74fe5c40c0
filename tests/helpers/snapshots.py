"""What the screens' snapshot tests (tests/app/snapshots) and the app tests share: terminal
sizes, waiting for a screen to settle before a snapshot, and the runs and chats they show."""

from __future__ import annotations

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
