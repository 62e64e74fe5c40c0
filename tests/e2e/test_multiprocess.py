"""Two processes (accelerate launch, gloo on the CPU) on demo:tiny, with DDP and with FSDP: only
rank 0 writes events; stop saves a checkpoint both ranks agree on; resume continues to done."""

from __future__ import annotations

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs.store import COMPLETE_MARKER, Run, RunStore
from loradeck.engine.train import launch
from tests.conftest import run_cli
from tests.helpers.jobs import (
    JOB_ENV,
    assert_schema,
    losses,
    of_type,
    phases,
    run_log,
    wait_for,
)


def resume_and_check(run, first: list[dict], stop_step: int, last_step: int):
    """Resume ``run`` by the CLI; check it resumed once at ``stop_step`` and logged every later
    step to ``last_step``. Returns the new events and the resume log event."""
    r = run_cli(["resume", run.id], env=JOB_ENV, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr + run_log(run)[-3000:]
    later = run.events()[len(first):]
    assert_schema(later)
    assert phases(later) == ["queued", "loading", "training", "saving", "done"]
    resumed = [ev for ev in of_type(later, "log") if ev.get("resumed_from")]
    assert len(resumed) == 1 and resumed[0]["step"] == stop_step
    assert [s for s, _ in losses(later)] == list(range(stop_step + 1, last_step + 1))
    return later, resumed[0]


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(ip, port) of every listening TCP socket of ``pid`` and its descendants."""
    import psutil

    root = psutil.Process(pid)
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        found += [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def test_job_command_goes_through_accelerate_for_several_processes(tmp_path):
    run = Run(tmp_path / "r")
    one = launch.job_command(run, cfg.demo_config())
    assert one[1:] == ["-m", "loradeck.engine.train.job", str(run.dir)]
    two = cfg.from_overrides(["training.num_processes=2", "training.num_machines=2",
                              "training.machine_rank=1", "training.main_process_ip=10.0.0.1",
                              "training.main_process_port=29555"], base=cfg.demo_config())
    cmd = launch.job_command(run, two, resume=True)
    joined = " ".join(cmd)
    local = " ".join(launch.job_command(run, cfg.from_overrides(
        ["training.num_processes=2"], base=cfg.demo_config())))
    assert "--main_process_ip 127.0.0.1" in local  # one machine: the rendezvous on loopback
    assert cmd[1:3] == ["-m", "loradeck.engine.patches.rendezvous_bind"]  # accelerate launch, bound
    for part in ("--num_processes 2", "--num_machines 2", "--machine_rank 1",
                 "--main_process_ip 10.0.0.1", "--main_process_port 29555", "--multi_gpu",
                 f"-m loradeck.engine.train.job {run.dir} --resume"):
        assert part in joined, part
    fsdp = cfg.from_overrides(["training.num_processes=2", "training.distributed=fsdp"],
                              base=cfg.demo_config())
    joined = " ".join(launch.job_command(run, fsdp))
    assert "--use_fsdp --fsdp_version 2" in joined and "--multi_gpu" not in joined
    assert "--fsdp_state_dict_type SHARDED_STATE_DICT" in joined


def test_fsdp_with_quantized_weights_or_several_machines_is_refused_before_it_starts():
    """The config owns these rules: a config that breaks one never validates."""
    with pytest.raises(LoradeckError) as err:
        cfg.from_overrides(["training.num_processes=2", "training.distributed=fsdp",
                            "model.quantization=4bit"], base=cfg.demo_config())
    line = err.value.line()
    assert "model.quantization" in line and "training.distributed" in line, line
    with pytest.raises(LoradeckError, match="training.main_process_ip: several machines"):
        cfg.from_overrides(["training.num_machines=2"], base=cfg.demo_config())
    r = run_cli(["train", "demo", "--detach", "--set", "training.num_processes=2", "--set",
                 "training.distributed=fsdp", "--set", "model.quantization=8bit"], env=JOB_ENV)
    assert r.returncode != 0 and "model.quantization: 8bit weights are not sharded with " \
        "training.distributed: fsdp" \
        in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(LoradeckError, match="fsdp runs on one machine") as err:
        cfg.from_overrides(["training.num_processes=4", "training.distributed=fsdp",
                            "training.num_machines=2", "training.main_process_ip=10.0.0.1"],
                           base=cfg.demo_config())
    assert "training.num_machines" in err.value.line()
    assert not RunStore().list()


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
    # nothing of the job listens beyond loopback: the rendezvous store, gloo's sockets
    listening = listening_addresses(run.state()["pid"])
    assert listening and all(ip in ("127.0.0.1", "::1") for ip, _ in listening), listening
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
    assert "loradeck.engine.patches.rendezvous_bind --num_processes 2" in run_log(run)

    later, _ = resume_and_check(run, first, stop_cp["step"], 30)
    assert (run.adapter_dir / "adapter_model.safetensors").is_file()
    assert not run.alive()


@pytest.mark.slow
def test_two_cpu_processes_with_fsdp_train_stop_resume_and_save_a_whole_adapter(demo_model):
    """FSDP2 over two CPU processes (gloo): the LoRA weights are sharded, checkpoints hold both
    processes' shards, resume loads them back (checked against the shards), and the final
    adapter is gathered into a PEFT adapter that merges into the base."""
    from safetensors.torch import load_file

    from loradeck.engine.publish.merge import merge_run

    r = run_cli(["train", "demo", "--detach", "--set", "training.num_processes=2", "--set",
                 "training.distributed=fsdp", "--set", "training.max_steps=12", "--set",
                 "training.save_steps=2", "--set", "training.logging_steps=1", "--set",
                 "training.eval_steps=1000", "--set", "training.learning_rate=0.005", "--set",
                 "training.warmup_ratio=0", "--set", "training.scheduler=constant"], env=JOB_ENV)
    assert r.returncode == 0, r.stderr
    run = RunStore().resolve(r.stdout.strip().splitlines()[0])
    wait_for(lambda: of_type(run.events(), "checkpoint") or not run.alive(), 300,
             "a first checkpoint")
    summary = launch.stop(run, wait=True, timeout=300)
    assert summary["phase"] == "stopped", run_log(run)[-3000:]
    log = run_log(run)
    assert "--use_fsdp --fsdp_version 2" in log

    first = run.events()
    assert_schema(first)
    assert phases(first) == ["queued", "loading", "training", "stopping", "stopped"]
    assert len(of_type(first, "info")) == 1 and of_type(first, "info")[0]["num_processes"] == 2
    stop_cp = of_type(first, "checkpoint")[-1]
    assert 2 <= stop_cp["step"] < 12
    cp = run.checkpoints_dir / f"checkpoint-{stop_cp['step']}"
    assert (cp / COMPLETE_MARKER).is_file()
    # sharded by FSDP (a DDP checkpoint holds adapter_model.safetensors instead): one shard of
    # the adapter and of the optimizer state from each process
    assert not (cp / "adapter_model.safetensors").exists()
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (cp / part).glob("*.distcp")) == \
            ["__0_0.distcp", "__1_0.distcp"], part
    assert (cp / "rng_state_0.pth").is_file() and (cp / "rng_state_1.pth").is_file()

    later, resumed = resume_and_check(run, first, stop_cp["step"], 12)
    assert resumed["tensors"] == 28 and resumed["adapter_checksum"] > 0  # 2 layers x 7 x A,B
    loss = [v for _, v in losses(first + later)]
    assert len(loss) == 12 and sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.3, loss
    assert "Traceback" not in run_log(run)

    adapter = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    assert len(adapter) == 28 and all(".lora_" in k for k in adapter)
    assert all(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)  # trained
    merged = merge_run(run)  # the base + this adapter, merged and checked against each other
    assert (merged / "model.safetensors").is_file()
