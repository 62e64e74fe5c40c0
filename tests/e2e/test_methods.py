"""Beyond SFT on demo:tiny, end to end through the CLI: DPO's reward margin grows, KTO and ORPO
train, GRPO logs its exact_answer reward, a DPO stage trains an SFT run's adapter further and
is merged and chatted with, and every refusal before launch is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loradeck.engine.runs.events import read_events
from tests.conftest import run_cli
from tests.helpers.jobs import JOB_ENV, assert_schema, of_type, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

STEPS = ["--set", "training.logging_steps=1", "--set", "training.eval_steps=10",
         "--set", "training.save_steps=10", "--set", "training.learning_rate=5e-3",
         "--set", "training.warmup_ratio=0"]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sums() -> list[tuple[int, int]]:
    return [(a, b) for a in range(8) for b in range(5)]


@pytest.fixture
def data(tmp_path) -> dict[str, Path]:
    pairs = [{"prompt": f"What is {a} plus {b}?", "chosen": f"{a} plus {b} is {a + b}.",
              "rejected": "I do not know."} for a, b in sums()]
    # UltraFeedback's shape: each answer a whole conversation, the prompt's turn included
    conversations = [{"prompt": r["prompt"],
                      "chosen": [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["chosen"]}],
                      "rejected": [{"role": "user", "content": r["prompt"]},
                                   {"role": "assistant", "content": r["rejected"]}]}
                     for r in pairs]
    unpaired = [{"prompt": r["prompt"], "completion": c, "label": good}
                for r in pairs for c, good in ((r["chosen"], True), (r["rejected"], False))]
    prompts = [{"prompt": f"What is {a} plus {b}? Answer with a number.", "answer": str(a + b)}
               for a, b in sums()]
    return {"pairs": write_rows(tmp_path / "pairs.jsonl", pairs),
            "conversations": write_rows(tmp_path / "conversations.jsonl", conversations),
            "unpaired": write_rows(tmp_path / "unpaired.jsonl", unpaired),
            "prompts": write_rows(tmp_path / "prompts.jsonl", prompts)}


def train(home: Path, *args: str) -> tuple[str, list[dict]]:
    r = run_cli(["train", "demo", *STEPS, *args], env={**JOB_ENV, "LORADECK_HOME": str(home)},
                timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    run_id = r.stdout.split("run ", 1)[1].split()[0]
    events = read_events(home / "runs" / run_id / "events.jsonl")
    assert_schema(events)
    return run_id, events


def figure(events: list[dict], name: str) -> list[tuple[int, float]]:
    return [(e["step"], e["figures"][name]) for e in of_type(events, "metrics")
            if name in e.get("figures", {})]


def test_dpo_reward_margin_grows_over_30_steps(tmp_path, data):
    home = tmp_path / "home"
    run_id, events = train(home, "--set", f"dataset.path={data['conversations']}",
                           "--set", "training.method=dpo", "--set", "training.max_steps=30")
    margins = figure(events, "rewards/margins")
    assert [s for s, _ in margins][:3] == [1, 2, 3] and margins[-1][0] == 30
    assert margins[0][1] == 0.0 and margins[-1][1] > 1.0  # from nothing to a clear preference
    assert figure(events, "rewards/accuracies")[-1][1] == 1.0
    assert of_type(events, "info")[0]["method"] == "dpo"
    env = {"LORADECK_HOME": str(home)}
    status = run_cli(["status", run_id], env=env).stdout
    assert "method     dpo" in status and "reward margin" in status
    summary = json.loads(run_cli(["status", run_id, "--json"], env=env).stdout)
    assert summary["key_figure"] == {"name": "reward margin", "value": margins[-1][1]}


def test_kto_and_orpo_train(tmp_path, data):
    home = tmp_path / "home"
    kto_id, kto = train(home, "--set", f"dataset.path={data['unpaired']}",
                        "--set", "training.method=kto", "--set", "training.max_steps=6")
    assert figure(kto, "kl") and of_type(kto, "done")
    orpo_id, orpo = train(home, "--set", f"dataset.path={data['pairs']}",
                          "--set", "training.method=orpo", "--set", "training.max_steps=6")
    assert figure(orpo, "rewards/margins") and figure(orpo, "nll_loss") and of_type(orpo, "done")
    r = run_cli(["compare", kto_id, orpo_id, "--json"], env={"LORADECK_HOME": str(home)})
    runs = json.loads(r.stdout)["runs"]
    assert [x["method"] for x in runs] == ["kto", "orpo"]
    assert runs[0]["key_figure"].startswith("KL ")
    assert runs[1]["key_figure"].startswith("reward margin ")


def test_grpo_with_exact_answer_logs_its_reward(tmp_path, data):
    run_id, events = train(tmp_path / "home", "--set", f"dataset.path={data['prompts']}",
                      "--set", "training.method=grpo",
                      "--set", "grpo.rewards=[exact_answer, max_length:40]",
                      "--set", "grpo.max_completion_length=12", "--set", "training.max_steps=4")
    exact = figure(events, "rewards/exact_answer/mean")
    assert [s for s, _ in exact] == [1, 2, 3, 4] and all(0.0 <= v <= 1.0 for _, v in exact)
    assert figure(events, "rewards/max_length/mean") and figure(events, "reward")
    assert figure(events, "completions/mean_length")[-1][1] <= 12
    (samples,) = of_type(events, "samples")  # at the last step (eval_steps is 10)
    assert samples["step"] == 4 and len(samples["samples"]) == 1  # one prompt a step: 4 answers
    first = samples["samples"][0]
    assert first["prompt"].startswith("What is ") and first["prompt"].endswith("number.")
    assert set(first["rewards"]) == {"exact_answer", "max_length"}
    assert first["reward"] == pytest.approx(sum(first["rewards"].values()), abs=1e-3)
    # it held out no rows: eval asks for prompts, in one line
    r = run_cli(["eval", run_id], env={**JOB_ENV, "LORADECK_HOME": str(tmp_path / "home")})
    assert r.returncode == 2 and "GRPO run" in r.stderr and "--prompts" in r.stderr, r.stderr


def test_a_dpo_stage_from_an_sft_run_then_merge_chat_export_eval_and_push(tmp_path, data,
                                                                         monkeypatch):
    """A second stage is a run like any other: merged, chatted with, exported to a GGUF file
    checked in llama.cpp, scored on the pairs it held out (the chosen answer as reference),
    and pushed with its file and a card that names both stages."""
    home = tmp_path / "home"
    sft_id, _ = train(home, "--set", "training.max_steps=10")
    dpo_id, events = train(home, "--set", f"dataset.path={data['pairs']}",
                           "--set", "training.method=dpo", "--set", "training.max_steps=6",
                           "--set", f"model.adapter={sft_id}")
    further = [e for e in of_type(events, "log") if e.get("source_run") == sft_id]
    assert len(further) == 1 and "training further the adapter of run " + sft_id in \
        further[0]["text"]
    assert of_type(events, "info")[0]["adapter_from"] == f"run {sft_id} (its adapter)"
    env = {**JOB_ENV, "LORADECK_HOME": str(home)}
    r = run_cli(["merge", dpo_id], env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (home / "runs" / dpo_id / "merged" / "config.json").is_file()
    r = run_cli(["chat", dpo_id, "--prompt", "What is 2 plus 3?", "--temperature", "0",
                 "--max-new-tokens", "8"], env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = run_cli(["export", dpo_id, "--quant", "q8_0"], env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "greedy 3/3 prompts the same" in r.stdout, r.stdout
    held = [json.loads(line) for line in
            (home / "runs" / dpo_id / "eval_rows.jsonl").read_text().splitlines()]
    pairs = {json.loads(line)["prompt"]: json.loads(line)["chosen"]
             for line in data["pairs"].read_text().splitlines()}
    assert held and all(h["example"]["messages"][-1]["content"] ==
                        pairs[h["example"]["messages"][0]["content"]] for h in held)
    r = run_cli(["eval", dpo_id, "--max-new-tokens", "8", "--json"], env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    scored = json.loads(r.stdout)
    assert [m["name"] for m in scored["models"]] == ["base", "adapter"]
    assert scored["rows"] == len(held)
    assert all(m["scores"]["chrf"] is not None and m["scores"]["loss"] for m in scored["models"])
    from tests.helpers.hub_server import USER, hub_env, serve

    with serve(tmp_path / "hub") as hub:
        r = run_cli(["push", dpo_id, "--repo", "second-stage", "--gguf", "q8_0"],
                    env={**env, **hub_env(hub)}, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        files = hub.files(f"{USER}/second-stage")
    assert f"{dpo_id}-q8_0.gguf" in files and "model.safetensors" in files
    pushed = files["README.md"].decode()
    assert "Trained in two stages" in pushed and "## Evaluation" in pushed
    monkeypatch.setenv("LORADECK_HOME", str(home))
    from loradeck.engine.publish.model_card import card_data, render_card
    from loradeck.engine.runs.store import RunStore

    run = RunStore().resolve(dpo_id)
    card = render_card(run, adapter=False)
    assert (f"Trained in two stages: first SFT in run {sft_id}, then DPO: preferring the "
            "chosen answer to the rejected one, training that adapter further.") in card
    assert "| method | dpo |" in card and "| final reward margin (dpo) | " in card
    assert "dpo" in card_data(run, adapter=False).tags


@pytest.mark.parametrize("rows, args, said", [
    ("sft", ["--set", "training.method=dpo"],
     "training.method dpo needs prompt, chosen, rejected in each row; this dataset has rows "
     "for SFT"),
    ("empty_chosen", ["--set", "training.method=dpo"], "rows.jsonl:2: 'chosen' is empty"),
    ("bad_label", ["--set", "training.method=kto"],
     "rows.jsonl:1: 'label' must be true or false (got 'maybe')"),
    ("sft", ["--set", "training.method=orpo"],
     "training.method orpo needs prompt, chosen, rejected in each row"),
    ("sft", ["--set", "training.method=kto"],
     "training.method kto needs prompt, completion, label in each row"),
    ("sft", ["--set", "training.method=grpo", "--set", "grpo.rewards=[exact_answer]"],
     "training.method grpo needs prompt in each row"),
    ("pairs", ["--set", "training.method=grpo"], "grpo.rewards: GRPO needs at least one reward"),
    ("pairs", ["--set", "training.method=grpo", "--set", "grpo.rewards=[exact_answer]",
               "--set", "grpo.num_generations=3"],
     "must be a multiple of grpo.num_generations (3)"),
    ("reward_file", [], "would run your Python code in the training job"),
])
def test_refused_before_launch_in_one_line(tmp_path, rows, args, said):
    path = tmp_path / "rows.jsonl"
    table = {
        "sft": [{"instruction": "hi", "response": "hello"}],
        "empty_chosen": [{"prompt": "a", "chosen": "b", "rejected": "c"},
                         {"prompt": "a", "chosen": " ", "rejected": "c"}],
        "bad_label": [{"prompt": "a", "completion": "b", "label": "maybe"}],
        "pairs": [{"prompt": "a", "chosen": "b", "rejected": "c"}],
        "reward_file": [{"prompt": "a", "answer": "1"}],
    }
    write_rows(path, table[rows])
    if rows == "reward_file":
        reward = tmp_path / "my_rewards.py"
        reward.write_text("def short(completions, **kw):\n    return [1.0 for _ in completions]\n")
        args = ["--set", "training.method=grpo", "--set", f"grpo.rewards=[{reward}:short]"]
    home = tmp_path / "home"
    r = run_cli(["train", "demo", "--set", f"dataset.path={path}", *args],
                env={**JOB_ENV, "LORADECK_HOME": str(home)})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert said in r.stderr
    assert not (home / "runs").is_dir() or not list((home / "runs").iterdir())


def test_a_reward_file_runs_with_the_flag(tmp_path, data):
    reward = tmp_path / "my_rewards.py"
    reward.write_text("def brief(completions, **columns):\n"
                      "    assert 'answer' in columns\n"
                      "    return [1.0 if len(c) < 20 else 0.0 for c in completions]\n")
    r = run_cli(["train", "demo", *STEPS, "--set", f"dataset.path={data['prompts']}",
                 "--set", "training.method=grpo", "--set", f"grpo.rewards=[{reward}:brief]",
                 "--set", "grpo.max_completion_length=8", "--set", "training.max_steps=2",
                 "--trust-remote-code"],
                env={**JOB_ENV, "LORADECK_HOME": str(tmp_path / "home")}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    assert "running your reward code" in r.stdout + r.stderr
    run_id = r.stdout.split("run ", 1)[1].split()[0]
    events = read_events(tmp_path / "home" / "runs" / run_id / "events.jsonl")
    assert figure(events, "rewards/brief/mean")


METHOD_RUNS = {  # the rows each method trains on, a figure it logs every step, its options
    "dpo": ("pairs", "rewards/margins", []),
    "kto": ("unpaired", "kl", []),
    "orpo": ("pairs", "nll_loss", []),
    "grpo": ("prompts", "rewards/exact_answer/mean",
             ["--set", "grpo.rewards=[exact_answer]", "--set", "grpo.max_completion_length=8"]),
}


@pytest.mark.parametrize("method", list(METHOD_RUNS))
def test_stop_resume_the_job_lock_and_the_oom_retry_hold_for_every_method(tmp_path, data,
                                                                          method):
    rows, name, options = METHOD_RUNS[method]
    args = [*STEPS, "--set", f"dataset.path={data[rows]}", "--set", f"training.method={method}",
            *options]
    home = tmp_path / "home"
    env = {**JOB_ENV, "LORADECK_HOME": str(home), "LORADECK_INJECT_HOLD_AT_STEP": "3"}
    r = run_cli(["train", "demo", *args, "--set", "training.max_steps=8",
                 "--set", "training.save_steps=3", "--detach"], env=env)
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split()[0]  # --detach prints the run id first
    events_path = home / "runs" / run_id / "events.jsonl"
    # step 2 logged: the job is training, and holds at the end of step 3 until the stop
    wait_for(lambda: any(e.get("step") == 2 for e in of_type(read_events(events_path),
                                                              "metrics")), 300, "step 2")
    second = run_cli(["resume", run_id], env=env, timeout=120)  # the job lock refuses it
    assert second.returncode == 2 and f"{run_id} is already running" in second.stderr, \
        second.stderr
    r = run_cli(["stop", run_id, "--wait"], env=env, timeout=300)  # it holds at step 3
    assert r.returncode == 0 and f"run {run_id}: stopped" in r.stdout, r.stdout + r.stderr
    assert (home / "runs" / run_id / "checkpoints" / "checkpoint-3").is_dir()
    r = run_cli(["resume", run_id], env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    events = read_events(events_path)
    resumed = [e for e in of_type(events, "log") if e.get("resumed_from")]
    assert len(resumed) == 1 and resumed[0]["step"] == 3
    steps = [s for s, _ in figure(events, name)]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # the figure goes on from the checkpoint

    oom_env = {**JOB_ENV, "LORADECK_HOME": str(home), "LORADECK_INJECT_OOM_AT_STEP": "2"}
    r = run_cli(["train", "demo", *args, "--set", "training.max_steps=4",
                 "--set", "training.save_steps=1"], env=oom_env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    oom_id = r.stdout.split("run ", 1)[1].split()[0]
    events = read_events(home / "runs" / oom_id / "events.jsonl")
    retried = [e for e in of_type(events, "log") if e.get("batch_size") == 2]
    assert retried and of_type(events, "done")
    assert [s for s, _ in figure(events, name)][-1] == 4


@pytest.mark.parametrize("base", [
    ["--set", "model.quantization=4bit"],  # QLoRA: an NF4 base
    ["--set", "model.quantization=none", "--set", "lora.variant=qalora"],  # a group INT4 base
])
def test_dpo_on_a_qlora_and_a_qalora_base(tmp_path, data, base):
    _, events = train(tmp_path / "home", "--set", f"dataset.path={data['pairs']}",
                      "--set", "training.method=dpo", "--set", "training.max_steps=3", *base)
    info = of_type(events, "info")[0]
    assert info["method"] == "dpo"
    assert (info["quantization"], info["lora_variant"]) in (("4bit", "lora"), ("none", "qalora"))
    assert [s for s, _ in figure(events, "rewards/margins")] == [1, 2, 3]
