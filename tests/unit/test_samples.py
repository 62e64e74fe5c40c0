"""Watching the model learn: at each eval step the job answers a few fixed prompts (the first
eval rows, or the config's own) greedily, writes them as a ``samples`` event beside their
references, and the Train screen shows the latest, rebuilt from the events on attach."""

from __future__ import annotations

import asyncio
import json

import pytest

from loradeck.engine import config as cfg
from tests.conftest import run_cli
from tests.helpers.event_schema import check_event
from tests.helpers.jobs import JOB_ENV, of_type


def test_the_sample_prompts_are_the_first_eval_rows_or_the_configs_own(demo_model):
    from loradeck.engine.data import prep
    from loradeck.engine.models.loading import load_tokenizer

    config = cfg.from_overrides(["eval.sample_prompts=2"], base=cfg.demo_config())
    tokenizer = load_tokenizer(config.model)
    prepared = prep.prepare(config, tokenizer)
    assert len(prepared.samples) == 2
    first = prepared.samples[0]
    assert first["prompt"].endswith("<|im_start|>assistant\n")  # rendered for generation
    assert first["text"] in first["prompt"] and first["reference"]
    assert not first["reference"].endswith(tokenizer.eos_token)
    own = cfg.from_overrides(['eval.prompts=["Say hi."]'], base=config)
    assert [s["text"] for s in prep.prepare(own, tokenizer).samples] == ["Say hi."]
    none = cfg.from_overrides(["eval.sample_prompts=0"], base=config)
    assert prep.prepare(none, tokenizer).samples == []
    starter = cfg.starter_text()  # the section documents itself
    assert "\neval:\n  sample_prompts: 3" in starter and "greedy answers" in starter


@pytest.fixture(scope="module")
def sampled_run(demo_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("samples-home")
    env = {**JOB_ENV, "LORADECK_HOME": str(home)}
    r = run_cli(["train", "demo", "--set", "training.max_steps=20",
                 "--set", "training.eval_steps=10", "--set", "training.logging_steps=5",
                 "--set", "eval.sample_prompts=2", "--set", "eval.sample_tokens=12"],
                env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = next((home / "runs").iterdir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return home, run_dir, events


def test_the_job_writes_samples_at_each_eval_step(sampled_run):
    _, _, events = sampled_run
    samples = of_type(events, "samples")
    assert [e["step"] for e in samples] == [10, 20]
    assert all(not check_event(e) for e in samples)
    for ev in samples:
        assert len(ev["samples"]) == 2 and ev["seconds"] >= 0
        for s in ev["samples"]:
            assert set(s) == {"prompt", "answer", "reference"}
            assert s["prompt"] and s["reference"] and isinstance(s["answer"], str)
    # the same prompts each time, so the answers can be compared step to step
    assert [s["prompt"] for s in samples[0]["samples"]] == \
        [s["prompt"] for s in samples[1]["samples"]]
    done = of_type(events, "done")[-1]
    assert done["sample_seconds"] == pytest.approx(sum(e["seconds"] for e in samples), abs=0.05)
    assert any("sample answers at the eval steps took" in e["text"] and "% of the training"
               in e["text"] for e in of_type(events, "log"))


def test_the_train_screen_shows_the_latest_samples_after_an_attach(sampled_run, monkeypatch):
    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.widgets.samples_panel import SamplesPanel
    from tests.helpers.app import wait_for

    home, run_dir, events = sampled_run
    monkeypatch.setenv("LORADECK_HOME", str(home))
    latest = of_type(events, "samples")[-1]

    async def main():
        app = LoradeckApp(run_id=run_dir.name)
        async with app.run_test(size=(100, 32)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: getattr(screen, "drawn", False), 60, "the run")
            panel = screen.query_one(SamplesPanel)
            assert panel.display
            text = str(panel.render())
            first = latest["samples"][0]
            assert text.startswith(f"step 20 · Q: {first['prompt']} → A: ")
            assert f"(ref: {first['reference']})" in text
            assert len(text.splitlines()) == 2

    asyncio.run(main())
