"""Reliability: one job per run, crash-safe checkpoint rotation, refusals before launch, model
code never run unannounced, damaged run files, ``--set`` as typed, the step reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.store import COMPLETE_MARKER, RunStore
from tests.conftest import ROOT, run_cli
from tests.helpers.jobs import JOB_ENV, of_type, run_log, wait_for
from tests.helpers.run_fixtures import write_finished_events

SHORT = ["--set", "training.max_steps=6", "--set", "training.logging_steps=1",
         "--set", "training.eval_steps=1000"]


def one_line(res) -> str:
    """The single error line of a refused command (exit 2, no traceback)."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


def queued_run(*overrides: str):
    """A run created as `train` creates it, its job not started."""
    return RunStore().create(cfg.from_overrides(list(overrides), base=cfg.demo_config()))


# ---- 1. one job per run -----------------------------------------------------------------------

@pytest.mark.slow
def test_two_resumes_at_the_same_instant_start_one_job_and_stop_reaches_it(demo_model):
    run = queued_run("training.max_steps=100000", "training.save_steps=100000",
                     "training.logging_steps=1", "training.eval_steps=100000")
    env = dict(os.environ, PYTHONPATH=str(ROOT), **JOB_ENV)
    procs = [subprocess.Popen([sys.executable, "-m", "loradeck.tui.cli", "resume", run.id, "--detach"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    pid = joblock.holder_pid(run.dir)
    assert refused.strip() == f"loradeck: {run.id} is already running (pid {pid}) " \
        f"(follow it with: loradeck logs {run.id} --follow)"
    assert run_log(run).count("=== ") == 1  # one job process was started
    wait_for(lambda: of_type(run.events(), "metrics"), 300, "training to begin")

    run.state_path.write_text("[1, 2", encoding="utf-8")  # state.json damaged on a live run
    assert run.alive()
    assert "already running" in one_line(run_cli(["resume", run.id, "--detach"], env=JOB_ENV))
    res = run_cli(["stop", run.id, "--wait"], env=JOB_ENV, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not run.alive()
    assert [e["phase"] for e in of_type(run.events(), "status")].count("loading") == 1


def test_a_job_started_by_hand_on_a_live_run_is_refused(tmp_path):
    run = queued_run()
    joblock.acquire(run.dir, run.id)
    try:
        res = subprocess.run([sys.executable, "-m", "loradeck.engine.train.job", str(run.dir)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    finally:
        joblock.release(run.dir)
    assert res.returncode == 2 and "already running" in res.stderr
    assert run.events() == []


CREATE = """
import sys, time
from loradeck.engine import config as cfg
from loradeck.engine.runs.store import RunStore
at = float(sys.argv[1])
config = cfg.demo_config()
time.sleep(max(at - time.time(), 0))
print(RunStore().create(config, name="same").id)
"""


def test_twelve_processes_creating_one_name_at_once_get_twelve_ids():
    at = time.time() + 3.0  # every process is up and waiting before then
    procs = [subprocess.Popen([sys.executable, "-c", CREATE, str(at)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(12)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    ids = [out.strip() for out, _ in outs]
    assert len(set(ids)) == 12 and all(i.startswith("same-") for i in ids)
    assert len(RunStore().list()) == 12


# ---- 2. checkpoint rotation after the new checkpoint is complete ------------------------------

@pytest.mark.slow
def test_a_crash_between_save_and_complete_keeps_the_last_complete_checkpoint(demo_model):
    """save_total_limit 1: the job is killed (-9) once checkpoint-4 is written and before it is
    marked complete. checkpoint-2 must still be there to resume from."""
    env = {**JOB_ENV, "LORADECK_INJECT_KILL_BEFORE_COMPLETE_AT_STEP": "4"}
    res = run_cli(["train", "demo", "--detach", *SHORT, "--set", "training.save_steps=2",
                   "--set", "training.save_total_limit=1"], env=env)
    assert res.returncode == 0, res.stderr
    run = RunStore().resolve(res.stdout.split()[0])
    wait_for(lambda: not run.alive(), 300, "the job to be killed")
    assert (run.checkpoints_dir / "checkpoint-4").is_dir()  # written, not complete
    assert [cp.name for cp in run.checkpoints()] == ["checkpoint-2"]
    res = run_cli(["resume", run.id], env=JOB_ENV, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    resumed = [e for e in of_type(run.events(), "log") if e.get("resumed_from")]
    assert resumed and resumed[-1]["step"] == 2
    assert [cp.name for cp in run.checkpoints()] == ["checkpoint-6"]  # rotation to the limit


# ---- 3. refused before launch ------------------------------------------------------------------

def _refused(*sets: str, config: str = "demo") -> str:
    args = ["train", config, "--detach"]
    for item in sets:
        args += ["--set", item]
    line = one_line(run_cli(args, env=JOB_ENV))
    assert not RunStore().list(), "a run directory was left behind"
    return line


def test_broken_model_directories_are_refused_before_launch(demo_model, tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    assert "no config.json" in _refused(f"model.name={empty}", "model.quantization=none")
    assert "not found" in _refused(f"model.name={tmp_path / 'missing'}",
                                   "model.quantization=none")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text((demo_model / "config.json").read_text())
    (damaged / "model.safetensors").write_bytes(b"\xff" * 64)
    line = _refused(f"model.name={damaged}", "model.quantization=none")
    assert "cannot read the safetensors header" in line and "model.safetensors" in line


def test_target_modules_the_model_lacks_are_named_before_launch(demo_model):
    line = _refused("lora.target_modules=[q_proj, qq_proj, vv]")
    assert "lora.target_modules: no module named qq_proj, vv" in line
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in line.split("linear modules are:")[1]
    assert "matches no module" in _refused("lora.target_modules=nothing_here.*")


def test_a_rank_larger_than_a_target_layer_is_refused(demo_model):
    config = json.loads((demo_model / "config.json").read_text())
    kv = config["num_key_value_heads"] * (config["hidden_size"] // config["num_attention_heads"])
    line = _refused(f"lora.r={kv + 1}", "lora.target_modules=[k_proj]")
    assert line.startswith("loradeck: lora.r: ") and f"set lora.r to {kv} or less" in line


@pytest.mark.parametrize("turns, message", [
    ([("assistant", "hi"), ("user", "q"), ("assistant", "a")],
     "message 1 (assistant) comes before any user turn"),
    ([("user", "q"), ("assistant", "a"), ("assistant", "b")],
     "message 3 (assistant) follows another assistant turn"),
    ([("user", "q"), ("system", "be brief"), ("assistant", "a")],
     "message 2 (system) comes after the first turn"),
])
def test_chat_rows_with_roles_out_of_order_name_the_row(tmp_path, turns, message):
    data = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": r, "content": c} for r, c in turns]}
    data.write_text("\n".join(json.dumps(x) for x in (good, good, bad)) + "\n")
    line = _refused(f"dataset.path={data}")
    assert f"{data}:3" in line and message in line, line


def test_a_row_of_two_million_characters_is_cut_not_refused(tmp_path, demo_model):
    from transformers import AutoTokenizer

    from loradeck.engine.data import prep

    data = tmp_path / "long.jsonl"
    rows = [{"instruction": "q", "response": "a"}] * 3 + \
        [{"instruction": "q", "response": "x" * 2_000_000}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = cfg.from_overrides([f"dataset.path={data}", "training.max_length=256",
                                 "dataset.eval_fraction=0"], base=cfg.demo_config())
    prep.check_dataset(config)  # its prompt fits: nothing to refuse before launch
    prepared = prep.prepare(config, AutoTokenizer.from_pretrained(demo_model))
    assert (prepared.stats["kept_rows"], prepared.stats["truncated_rows"]) == (4, 1)


# ---- 4. model code never runs unannounced ------------------------------------------------------

def _remote_code_model(demo_model: Path, tmp_path: Path) -> Path:
    model = tmp_path / "custom-model"
    model.mkdir()
    for f in demo_model.iterdir():
        if f.is_file():
            (model / f.name).write_bytes(f.read_bytes())
    (model / "modeling_custom.py").write_text("raise SystemExit('model code ran')\n")
    return model


def test_trust_remote_code_needs_the_flag_and_names_the_files(demo_model, tmp_path):
    model = _remote_code_model(demo_model, tmp_path)
    sets = [f"model.name={model}", "model.trust_remote_code=true", "model.quantization=none"]
    line = _refused(*sets)
    assert "model.trust_remote_code" in line and "modeling_custom.py" in line
    assert "--trust-remote-code" in line
    args = ["train", "demo", "--detach", "--trust-remote-code", *SHORT]
    for item in sets:
        args += ["--set", item]
    res = run_cli(args, env=JOB_ENV)
    assert res.returncode == 0, res.stderr
    run = RunStore().resolve(res.stdout.split()[0])
    said = [e["text"] for e in of_type(run.events(), "log")]
    assert any("running the model's own code: modeling_custom.py" in t for t in said), said
    wait_for(lambda: not run.alive(), 300, "the job to end")


def test_the_app_asks_before_running_model_code(demo_model, tmp_path):
    import asyncio

    from loradeck.tui.app import LoradeckApp
    from loradeck.tui.screens.confirm import ConfirmDialog
    from tests.helpers.app import wait_for as app_wait

    model = _remote_code_model(demo_model, tmp_path)
    draft = cfg.from_overrides([f"model.name={model}", "model.trust_remote_code=true",
                                "model.quantization=none"], base=cfg.demo_config())

    async def main():
        app = LoradeckApp(draft=draft)
        async with app.run_test(size=(100, 32)) as pilot:
            app.action_go("train")
            await pilot.pause()
            await pilot.press("s")
            await app_wait(pilot, lambda: isinstance(app.screen, ConfirmDialog), 10, "dialog")
            body = str(app.screen.query_one("#confirm-body").render())
            assert "modeling_custom.py" in body
            await pilot.press("n")
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmDialog)
            assert RunStore().list() == []  # no means nothing started

    asyncio.run(main())


# ---- 6. damaged run files ----------------------------------------------------------------------

def test_a_torn_last_line_never_breaks_a_finished_run(tmp_path):
    run = queued_run()
    write_finished_events(run)
    with open(run.events_path, "a", encoding="utf-8") as fh:
        fh.write('{"t": 1, "type": "status", "phase": "mer')  # a writer killed mid-line
    assert run.summary()["phase"] == "done"
    assert "already finished" in one_line(run_cli(["resume", run.id]))
    EventWriter(run.events_path).log("after the tear")
    assert run.events()[-1]["text"] == "after the tear"  # not glued onto the torn line
    # the closing status itself torn: the done event still says the run finished
    second = queued_run()
    write_finished_events(second)
    text = second.events_path.read_text(encoding="utf-8")
    second.events_path.write_text(text[: text.rindex('"phase"')], encoding="utf-8")
    assert second.summary()["phase"] == "done"


@pytest.mark.parametrize("content", [b"\x00\xff\xfe binary", b"[1, 2, 3]", b'"text"',
                                     b'{"pid": "twelve", "created": "yesterday"}'])
def test_a_state_file_of_any_shape_only_affects_its_run(content):
    good = queued_run("run.name=good")
    bad = queued_run("run.name=bad")
    bad.state_path.write_bytes(content)
    res = run_cli(["runs"])
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines()[1:]}
    assert "state unreadable" in lines[bad.id] and "queued" in lines[good.id]
    assert run_cli(["status", bad.id]).returncode == 0


def test_a_home_that_cannot_be_written_is_a_storage_error(tmp_path, monkeypatch):
    """A home loradeck cannot write to (here a path under a file: CI runs as root, for whom a
    read-only mode does not stop writes; both are the same OSError path)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LORADECK_HOME", str(blocker / "home"))
    res = run_cli(["train", "demo", "--detach"], env={"LORADECK_HOME": str(blocker / "home")})
    line = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 1 and len(line) == 1, res.stderr
    assert "cannot write here" in line[0] and "LORADECK_HOME" in line[0]
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr


def test_logs_into_a_closed_pipe_end_quietly(tmp_path):
    run = queued_run()
    write_finished_events(run)
    run.log_path.write_text("a log line\n" * 20000, encoding="utf-8")
    cmd = f"{sys.executable} -m loradeck.tui.cli logs {run.id} | head -n 2"
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert len(res.stdout.splitlines()) == 2


# ---- 8. --set as typed ------------------------------------------------------------------------

def test_set_takes_nested_keys_and_literal_text():
    config = cfg.from_overrides(["dataset.columns.instruction=question",
                                 "dataset.system_prompt=You are #1 helper",
                                 "dataset.path=my #1.jsonl", "training.max_steps=20",
                                 "training.learning_rate=1e-4",
                                 "lora.target_modules=[q_proj, v_proj]",
                                 "model.revision=null", "run.name=a:b"])
    assert config.dataset.columns == {"instruction": "question"}
    assert config.dataset.system_prompt == "You are #1 helper"
    assert config.dataset.path == "my #1.jsonl"
    assert config.training.max_steps == 20 and config.training.learning_rate == 1e-4
    assert config.lora.target_modules == ["q_proj", "v_proj"]
    assert config.model.revision is None and config.run.name == "a:b"
    with pytest.raises(LoradeckError, match="unknown section 'modle'"):
        cfg.from_overrides(["modle.name=x"])
    with pytest.raises(LoradeckError, match="dataset.path is a value, not a mapping"):
        cfg.from_overrides(["dataset.path.x=1"], base=cfg.demo_config())


def test_train_help_describes_set_with_examples():
    res = run_cli(["train", "--help"])
    text = " ".join(res.stdout.split())
    assert res.returncode == 0
    assert "at any depth" in text and "dataset.columns.instruction=question" in text
    assert "literal text unless it is clearly YAML" in text
    assert "examples:" in text and "loradeck train my.yaml --detach" in text
    assert "--trust-remote-code" in text


# ---- 9. the step reached -----------------------------------------------------------------------

def test_status_step_is_the_last_step_reached():
    done = queued_run("run.name=done-at-2")
    ev = EventWriter(done.events_path)
    ev.status("training", "training")
    ev.emit("metrics", step=1, max_steps=2, loss=2.0)
    ev.emit("done", adapter="a", step=2, max_steps=2, train_loss=1.5, eval_loss=None)
    ev.status("done", "finished")
    assert (done.summary()["step"], done.summary()["max_steps"]) == (2, 2)
    stopped = queued_run("run.name=stopped")
    ev = EventWriter(stopped.events_path)
    ev.status("training", "training")
    ev.emit("metrics", step=165, max_steps=400, loss=1.0)
    ev.status("stopping", "stop requested")
    ev.emit("checkpoint", step=166, path=str(stopped.checkpoints_dir / "checkpoint-166"))
    ev.status("stopped", "stopped at step 166")
    res = run_cli(["status", stopped.id])
    assert "step       166" in res.stdout
    assert "done-at-2" in run_cli(["runs"]).stdout and " 2/2 " in run_cli(["runs"]).stdout
    assert COMPLETE_MARKER  # the marker name stays what resume reads
