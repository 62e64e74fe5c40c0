"""Training runs end to end: LoRA and QLoRA on demo:tiny, events, the CLI around runs.

The slow tests start real jobs (`loradeck train`) on the CPU; the others check the pieces a job
is made of (adapter variants, the trainer config, the progress line) and the refusals that come
before any model loads.
"""

from __future__ import annotations

import json
import math
import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.runs.progress import Progress
from loradeck.engine.runs.store import COMPLETE_MARKER, Run, RunStore
from tests.conftest import ROOT, run_cli, teardown_env
from tests.helpers.jobs import (
    JOB_ENV,
    assert_schema,
    losses,
    of_type,
    phases,
    run_log,
    wait_for,
)

FAST = ["--set", "training.max_steps=30", "--set", "training.learning_rate=0.002",
        "--set", "training.logging_steps=2", "--set", "training.eval_steps=10",
        "--set", "training.save_steps=10"]
METRIC_FIELDS = ("step", "max_steps", "epoch", "loss", "learning_rate", "grad_norm",
                 "tokens_per_second", "memory_gb", "eta_seconds")


# ---- whole runs -----------------------------------------------------------------------------

@pytest.mark.slow
def test_the_offline_demo_learns_its_rows_and_the_tuned_model_answers_from_them(tmp_path,
                                                                                 demo_model):
    """`loradeck init --demo` then `loradeck train`: the demo's own config, untouched, takes
    demo:tiny from chance (loss ~ln 1024) to its rows' answers, and the tuned model gives a
    training row's answer where the base model does not."""
    config = tmp_path / "demo.yaml"
    assert run_cli(["init", str(config), "--demo"]).returncode == 0
    r = run_cli(["train", str(config)], env=JOB_ENV, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run = RunStore().list()[-1]
    trained = losses(run.events())
    assert trained[0][1] > 6.0 and trained[-1][1] < 0.5, trained
    question = ["--temperature", "0", "--max-new-tokens", "24", "--prompt",
                "What is the capital of France?"]
    tuned = run_cli(["chat", run.id, *question], env=JOB_ENV)
    base = run_cli(["chat", run.id, "--base", *question], env=JOB_ENV)
    assert tuned.returncode == 0 and base.returncode == 0, tuned.stderr + base.stderr
    assert tuned.stdout.strip() == "The capital of France is Paris."
    assert "Paris" not in base.stdout


@pytest.mark.slow
def test_train_follows_a_lora_run_to_done_and_runs_status_logs_show_it(demo_model, tmp_path):
    probe, torn = teardown_env(tmp_path)
    r = run_cli(["train", "demo", *FAST], env={**JOB_ENV, **probe}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run = RunStore().list()[-1]
    # the CLI waits for the job process to be gone (its lock released), and the job ends as
    # soon as its last line is written (no interpreter teardown with torch and the model loaded)
    assert not run.alive()
    assert str(run.state()["pid"]) not in {p.name for p in torn.iterdir()}
    assert f"run {run.id} started" in r.stdout
    assert "step 30/30 (100%)" in r.stdout and f"run {run.id} done" in r.stdout

    events = run.events()
    assert_schema(events)
    seq = phases(events)
    assert seq[0] == "queued" and seq[-1] == "done"
    assert [p for p in seq if p in ("loading", "training", "saving", "done")] == \
        ["loading", "training", "saving", "done"]

    info = of_type(events, "info")[0]
    assert 0 < info["trainable_parameters"] < info["total_parameters"]
    assert info["footprint_gb"] > 0 and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["quantization"] == "none"
    assert info["train_rows"] > info["eval_rows"] > 0 and info["truncated_rows"] == 0

    train_metrics = [ev for ev in of_type(events, "metrics") if "loss" in ev]
    assert [ev["step"] for ev in train_metrics] == [1, *range(2, 31, 2)]
    for ev in train_metrics:
        assert all(k in ev for k in METRIC_FIELDS if k != "eta_seconds" or ev["step"] < 30), ev
        assert ev["step"] < 30 or "eta_seconds" not in ev  # no ETA at the last step
        assert ev["max_steps"] == 30 and ev["tokens_per_second"] > 0 and ev["memory_gb"] > 0
    evals = [ev for ev in of_type(events, "metrics") if "eval_loss" in ev]
    assert [ev["step"] for ev in evals] == [10, 20, 30]
    first, last = train_metrics[0]["loss"], train_metrics[-1]["loss"]
    assert last < first - 0.4, (first, last)

    cps = of_type(events, "checkpoint")
    assert [ev["step"] for ev in cps] == [10, 20, 30]
    for ev in cps:
        assert (Path(ev["path"]) / COMPLETE_MARKER).is_file()
    done = of_type(events, "done")[0]
    adapter = Path(done["adapter"])
    assert adapter == run.adapter_dir
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (adapter / "tokenizer_config.json").is_file()
    assert done["train_loss"] == last and done["eval_loss"] == evals[-1]["eval_loss"]
    assert done["runtime_s"] > 0
    assert run.state()["phase"] == "done"

    # runs, status, logs
    r = run_cli(["runs"])
    assert r.returncode == 0
    row = next(line for line in r.stdout.splitlines() if line.startswith(run.id))
    assert row.split()[1:4] == ["done", "30/30", f"{last:.4f}"] and row.split()[4] == "no"
    listed = json.loads(run_cli(["runs", "--json"]).stdout)
    assert [(s["id"], s["phase"], s["step"], s["max_steps"], s["alive"]) for s in listed] == \
        [(run.id, "done", 30, 30, False)]

    prefix = run.id[:12]
    r = run_cli(["status", prefix])
    assert r.returncode == 0
    assert f"run        {run.id}" in r.stdout and "phase      done" in r.stdout
    assert f"loss       {last:.4f}" in r.stdout and "alive      no" in r.stdout
    assert f"dir        {run.dir}" in r.stdout
    s = json.loads(run_cli(["status", prefix, "--json"]).stdout)
    assert (s["phase"], s["step"], s["max_steps"], s["loss"], s["eval_loss"], s["alive"]) == \
        ("done", 30, 30, last, evals[-1]["eval_loss"], False)
    assert s["dir"] == str(run.dir) and s["has_adapter"]

    r = run_cli(["logs", prefix])
    assert r.returncode == 0
    assert "loading: loading demo:tiny on cpu" in r.stdout
    assert "checkpoint saved at step 10: " in r.stdout and "done: adapter saved in " in r.stdout
    assert "Loading weights" not in r.stdout and "{'loss'" not in r.stdout  # readable only
    raw = run_cli(["logs", prefix, "--raw"])
    assert "loradeck.engine.train.job" in raw.stdout and "train_loss" in raw.stdout
    r = run_cli(["logs", prefix, "--follow"], timeout=60)  # the run has ended: returns at once
    assert r.returncode == 0 and r.stdout.rstrip().endswith(f"--- run {run.id}: done ---")


def _read_until(fd: int, needle: str, timeout: float) -> str:
    out = b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in out:
        assert time.monotonic() < deadline, f"no {needle!r} in terminal output: {out!r}"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out.decode(errors="replace")


@pytest.mark.slow
def test_qlora_run_started_in_a_terminal_finishes_after_the_terminal_hangs_up(demo_model):
    """`loradeck train` follows the run in a terminal; the terminal goes away (SIGHUP to its
    whole session, as when SSH drops); the job carries on to done and its loss falls."""
    env = dict(os.environ, **JOB_ENV)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-m", "loradeck.tui.cli", "train", "demo", *FAST,
            "--set", "model.quantization=4bit"]
    pid, fd = pty.fork()  # the child leads a new session with the pty as its terminal
    if pid == 0:
        os.chdir(ROOT)
        os.execve(sys.executable, args, env)
    try:
        text = _read_until(fd, " started (", timeout=300)
        run_id = text.split("run ", 1)[1].split(" started", 1)[0]
        run = RunStore().resolve(run_id)
        job_pid = run.state()["pid"]
        assert run.alive()
        os.killpg(pid, signal.SIGHUP)  # the terminal hangs up: its session gets SIGHUP
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGHUP
    assert run.alive() and run.state()["pid"] == job_pid

    wait_for(lambda: not run.alive(), 300, "the job to finish")
    events = run.events()
    assert_schema(events)
    assert phases(events)[-1] == "done", run_log(run)[-3000:]
    assert of_type(events, "info")[0]["quantization"] == "4bit"
    steps = losses(events)
    assert steps[-1][0] == 30 and steps[-1][1] < steps[0][1] - 0.4, steps
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()


# ---- the pieces -----------------------------------------------------------------------------

def test_lora_variants_construct_and_train_a_step(demo_model):
    import torch
    from peft import get_peft_model

    from loradeck.engine.models.loading import load_model
    from loradeck.engine.train.sft_args import lora_config

    for variant, bias in (("lora", "none"), ("rslora", "lora_only"), ("dora", "none")):
        config = cfg.from_overrides([f"lora.variant={variant}", f"lora.bias={bias}", "lora.r=4",
                                     "lora.alpha=8", "model.quantization=none"],
                                    base=cfg.demo_config())
        lc = lora_config(config)
        assert (lc.use_rslora, lc.use_dora, lc.bias) == \
            (variant == "rslora", variant == "dora", bias)
        model = get_peft_model(load_model(config.model, device="cpu"), lc)
        layer = model.base_model.model.model.layers[0]
        q, gate = layer.self_attn.q_proj, layer.mlp.gate_proj  # all-linear reaches the MLP too
        assert "default" in q.lora_A and "default" in gate.lora_A
        want = 8 / math.sqrt(4) if variant == "rslora" else 8 / 4
        assert q.scaling["default"] == pytest.approx(want)
        assert ("default" in q.lora_magnitude_vector) == (variant == "dora")
        ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert q.lora_B["default"].weight.grad is not None


def test_sft_config_follows_the_training_section(tmp_path):
    from loradeck.engine.train.sft_args import sft_config

    config = cfg.from_overrides(["training.max_length=128", "training.packing=true",
                                 "training.save_steps=7", "training.seed=5",
                                 "training.batch_size=3", "training.grad_accum=2"],
                                base=cfg.demo_config())
    run = Run(tmp_path / "run")
    args = sft_config(config, run, device="cpu", dtype=__import__("torch").float32,
                      has_eval=True)
    assert args.output_dir == str(run.checkpoints_dir)
    assert (args.max_length, args.packing, args.save_steps, args.seed) == (128, True, 7, 5)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (3, 2)
    assert args.completion_only_loss is None  # prompt/completion rows: loss on the completion
    assert args.activation_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.use_cpu and not args.bf16 and not args.fp16
    assert args.eval_strategy == "steps" and args.report_to in ("none", [], ["none"])
    assert config.training.report_to == "none"  # the default: no tracker
    for tracker in ("tensorboard", "wandb", "trackio"):
        traced = config.model_copy(update={"training": config.training.model_copy(
            update={"report_to": tracker})})
        args = sft_config(traced, run, device="cpu", dtype=__import__("torch").float32,
                          has_eval=True)
        assert args.report_to == [tracker]  # passed through to the Trainer


def test_a_tracker_that_is_not_installed_is_refused_before_launch(loradeck_home):
    import importlib.util

    missing = [t for t in ("wandb", "trackio", "tensorboard") if importlib.util.find_spec(t)
               is None]
    if not missing:  # every tracker is installed here: nothing can be refused
        pytest.skip("all trackers installed")
    tracker = missing[0]
    r = run_cli(["train", "demo", "--set", f"training.report_to={tracker}", "--detach"],
                env=JOB_ENV, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == (f"loradeck: training.report_to: {tracker} is not installed "
                                f"(pip install 'loradeck[{tracker}]', or set "
                                "training.report_to: none)")
    assert not (loradeck_home / "runs").exists() or not any((loradeck_home / "runs").iterdir())
    starter = cfg.starter_text()
    assert "report_to: none" in starter and "tensorboard" in starter  # documented in the YAML


def test_bad_config_and_bad_data_fail_before_any_model_loads(tmp_path, loradeck_home):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  name: demo:tiny\n\tquantization: 4bit\n")
    bad_value = tmp_path / "bad-value.yaml"
    bad_value.write_text("training:\n  max_steps: 0\n")
    bad_rows = tmp_path / "rows.jsonl"
    bad_rows.write_text('{"instruction": "hi", "response": "hello"}\n{"instruction": oops}\n')
    cases = [
        (["train", "demo", "--set", "training.batch_size=0"], "training.batch_size"),
        (["train", "demo", "--set", "lora.varient=dora"], "lora.varient"),
        (["train", str(tmp_path / "missing.yaml")], "config file not found"),
        (["train", str(bad_yaml)], f"{bad_yaml}:3"),
        (["train", str(bad_value)], f"{bad_value}: training.max_steps"),
        (["train", "demo", "--set", f"dataset.path={bad_rows}"], f"{bad_rows}:2"),
    ]
    for args, needle in cases:
        r = run_cli(args, env=JOB_ENV)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("loradeck: "), r.stderr
        assert needle in lines[0] and "Traceback" not in r.stderr
    assert not (loradeck_home / "runs").exists() or not any((loradeck_home / "runs").iterdir())


def test_progress_line_from_events():
    prog = Progress()
    assert prog.update({"type": "status", "phase": "training", "message": "go"}) == \
        "training: go"
    assert prog.update({"type": "metrics", "step": 12, "max_steps": 30, "loss": 5.93101,
                        "tokens_per_second": 1234.5, "eta_seconds": 72}) is None
    prog.update({"type": "metrics", "step": 12, "max_steps": 30, "eval_loss": 6.012})
    assert prog.line() == ("training  step 12/30 (40%)  loss 5.9310  eval 6.0120  "
                           "1,234 tok/s  ETA 1:12")
    note = prog.update({"type": "error", "kind": "oom", "message": "out of memory",
                        "hint": "lower training.batch_size"})
    assert note == "error (oom): out of memory (lower training.batch_size)"
    assert prog.exit_code() == 4
    prog.update({"type": "status", "phase": "failed", "message": "out of memory"})
    assert prog.finished and prog.exit_code() == 1
    assert Progress(phase="done").exit_code() == 0 and Progress(phase="stopped").exit_code() == 3
