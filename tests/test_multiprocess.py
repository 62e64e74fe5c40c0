"""Two processes (accelerate launch, gloo on the CPU) on demo:tiny: only rank 0 writes events;
stop saves a checkpoint both ranks agree on; resume continues to done."""

from __future__ import annotations

import pytest

from engine import config as cfg
from engine import launch
from engine.runstore import COMPLETE_MARKER, Run, RunStore
from tests.conftest import run_cli
from tests.test_train import (
    JOB_ENV,
    assert_schema,
    losses,
    of_type,
    phases,
    run_log,
    wait_for,
)


def test_job_command_goes_through_accelerate_for_several_processes(tmp_path):
    run = Run(tmp_path / "r")
    one = launch.job_command(run, cfg.demo_config())
    assert one[1:] == ["-m", "engine.job", str(run.dir)]
    two = cfg.from_overrides(["training.num_processes=2", "training.num_machines=2",
                              "training.machine_rank=1", "training.main_process_ip=10.0.0.1",
                              "training.main_process_port=29555"], base=cfg.demo_config())
    cmd = launch.job_command(run, two, resume=True)
    joined = " ".join(cmd)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    for part in ("--num_processes 2", "--num_machines 2", "--machine_rank 1",
                 "--main_process_ip 10.0.0.1", "--main_process_port 29555", "--multi_gpu",
                 f"-m engine.job {run.dir} --resume"):
        assert part in joined, part
    fsdp = cfg.from_overrides(["training.num_processes=2", "training.distributed=fsdp"],
                              base=cfg.demo_config())
    joined = " ".join(launch.job_command(run, fsdp))
    assert "--use_fsdp" in joined and "--multi_gpu" not in joined


@pytest.mark.slow
def test_two_cpu_processes_train_stop_and_resume(demo_model):
    r = run_cli(["train", "demo", "--detach", "--set", "training.num_processes=2", "--set",
                 "training.max_steps=30", "--set", "training.save_steps=3", "--set",
                 "training.logging_steps=1", "--set", "training.eval_steps=1000"], env=JOB_ENV)
    assert r.returncode == 0, r.stderr
    run = RunStore().resolve(r.stdout.strip().splitlines()[0])
    assert run.state()["launcher"] == "accelerate"
    wait_for(lambda: of_type(run.events(), "checkpoint") or not run.alive(), 400,
             "a first checkpoint")
    summary = launch.stop(run, wait=True, timeout=300)  # what `loradeck stop --wait` calls
    assert summary["phase"] == "stopped", run_log(run)[-3000:]

    first = run.events()
    assert_schema(first)
    assert phases(first) == ["queued", "loading", "training", "stopping", "stopped"]
    assert len(of_type(first, "info")) == 1  # rank 1 writes nothing
    info = of_type(first, "info")[0]
    assert (info["num_processes"], info["effective_batch"]) == (2, 4 * 1 * 2)
    steps = [s for s, _ in losses(first)]
    assert steps == sorted(set(steps)) and steps[0] == 1
    stop_cp = of_type(first, "checkpoint")[-1]
    cp = run.checkpoints_dir / f"checkpoint-{stop_cp['step']}"
    assert (cp / COMPLETE_MARKER).is_file()
    assert (cp / "rng_state_0.pth").is_file() and (cp / "rng_state_1.pth").is_file()
    assert stop_cp["step"] < 30 and run.summary()["phase"] == "stopped"
    assert "accelerate.commands.launch --num_processes 2" in run_log(run)

    r = run_cli(["resume", run.id], env=JOB_ENV, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr + run_log(run)[-3000:]
    later = run.events()[len(first):]
    assert_schema(later)
    assert phases(later) == ["queued", "loading", "training", "saving", "done"]
    resumed = [ev for ev in of_type(later, "log") if ev.get("resumed_from")]
    assert len(resumed) == 1 and resumed[0]["step"] == stop_cp["step"]
    after = [s for s, _ in losses(later)]
    assert after == list(range(stop_cp["step"] + 1, 31))
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()
    assert not run.alive()
