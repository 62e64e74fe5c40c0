"""Starting, stopping and resuming training jobs that outlive the terminal.

A job is ``python -m loradeck.engine.train.job RUN_DIR [--resume]`` in its own session (setsid), with stdin
from /dev/null and stdout+stderr appended to RUN/train.log, so closing the terminal, SIGHUP or a
dropped SSH link does not stop it. With ``training.num_processes`` above 1 the job goes through
``accelerate launch`` and only its main process writes events.

Light module: the app imports it. Nothing heavy (torch and friends) is imported here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs import run_files
from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.phase import FINISHED
from loradeck.engine.runs.store import Run, RunStore, process_start_time, summarize
from loradeck.engine.system import gpus

# ---- configs --------------------------------------------------------------------------------

def absolutize(config: cfg.Config) -> cfg.Config:
    """A copy whose local model, adapter, dataset and reward-file paths are absolute, so a job
    finds them from anywhere."""
    data = config.to_dict()
    for section, key, keyword in (("model", "name", "demo:tiny"), ("dataset", "path", "demo")):
        value = data[section][key]
        if isinstance(value, str) and value and value != keyword \
                and Path(value).expanduser().exists():
            data[section][key] = str(Path(value).expanduser().resolve())
    adapter = data["model"].get("adapter")
    if isinstance(adapter, str) and adapter and Path(adapter).expanduser().is_dir():
        data["model"]["adapter"] = str(Path(adapter).expanduser().resolve())
    data["grpo"]["rewards"] = [_absolute_reward(spec) for spec in data["grpo"]["rewards"]]
    return cfg.validate(data, source="config")


def _absolute_reward(spec: str) -> str:
    """A ``FILE.py:FUNCTION`` reward with its file made absolute (a built-in as it is)."""
    from loradeck.engine.train.rewards import is_file_reward

    if not is_file_reward(spec):
        return spec
    path, _, name = spec.rpartition(":")
    found = Path(path).expanduser()
    return f"{found.resolve()}:{name}" if found.exists() else spec


def process_count(config: cfg.Config) -> int:
    """How many processes the job runs: training.num_processes, 'all' meaning every GPU."""
    n = config.training.num_processes
    if n == "all":
        return max(_gpu_count(), 1)
    return int(n)


def _gpu_count() -> int:
    """Number of visible NVIDIA GPUs, without importing torch."""
    return gpus.visible_count()


def check_before_start(config: cfg.Config, *, trust_remote_code: bool = False,
                       progress: Callable[[str], None] | None = None) -> list[str]:
    """Fail with one line before any model loads: the model's files, bad data, then the
    preflight checks (device, dtype, bitsandbytes, disk). Returns warnings, among them the
    model code that will run when ``model.trust_remote_code`` is on (refused unless
    ``trust_remote_code`` confirms it). A ``.gguf`` model is converted first (once, in a child
    process; its lines go to ``progress``), so its files are checked like any other's."""
    from loradeck.engine.data import method_rows
    from loradeck.engine.data import prep as dataset_prep
    from loradeck.engine.models import from_gguf
    from loradeck.engine.models import layout as model_check
    from loradeck.engine.notify import check as notify_check
    from loradeck.engine.train import adapter_source, preflight, rewards

    notify_check.check(config)
    preflight.check_liger(config)
    if from_gguf.is_gguf(config.model.name):
        from_gguf.convert_in_child(config.model.name, progress or (lambda _line: None))
    model_check.check(config)
    announced = model_check.check_remote_code(config, trust_remote_code)
    announced += rewards.check(config, trust_remote_code)
    source = adapter_source.check(config)
    if source is not None:
        announced.append(f"model.adapter: training further the adapter of {source.describe()}")
    if config.training.method == "sft":
        dataset_prep.check_template(config, dataset_prep.check_dataset(config))
    else:
        method_rows.read(config.dataset, config.training.method, limit=dataset_prep.CHECK_ROWS)
    return announced + list(preflight.check(config) or [])


# ---- spawning -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# FSDP2 (torch fully_shard): every parameter is sharded on its own, so frozen base weights and
# trainable LoRA weights mix freely (FSDP1's flat parameters needed use_orig_params and a LoRA wrap
# policy), and it is the FSDP that runs on CPU with gloo (FSDP1 stops with "FSDP needs a non-CPU
# accelerator device"). Checkpoints are sharded (adapter weights, optimizer state per process,
# written with torch.distributed.checkpoint); the final adapter is gathered whole (loradeck.engine.train.trainer).
FSDP_FLAGS = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_reshard_after_forward", "true",
              "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
              "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
              "--fsdp_cpu_ram_efficient_loading", "false"]


def job_command(run: Run, config: cfg.Config, *, resume: bool = False) -> list[str]:
    """The command line that runs the job for ``run`` (through accelerate for several processes)."""
    job = ["-m", "loradeck.engine.train.job", str(run.dir)] + (["--resume"] if resume else [])
    n = process_count(config)
    if n <= 1:
        return [sys.executable, *job]
    t = config.training
    cmd = [sys.executable, "-m", "loradeck.engine.patches.rendezvous_bind",  # accelerate launch, bound
           "--num_processes", str(n), "--num_machines", str(t.num_machines),
           "--machine_rank", str(t.machine_rank), "--mixed_precision", "no",
           "--dynamo_backend", "no"]
    # One machine: the rendezvous listens on loopback only; several: where the user says.
    cmd += ["--main_process_ip", t.main_process_ip or "127.0.0.1"]
    port = t.main_process_port or (_free_port() if t.num_machines == 1 else 29500)
    cmd += ["--main_process_port", str(port)]
    if t.distributed == "fsdp":
        cmd += FSDP_FLAGS
    else:
        # torch.distributed.run underneath; on a machine without GPUs the job trains on CPU
        # with gloo (it sets use_cpu), so the same flag serves both.
        cmd += ["--multi_gpu"]
    return [*cmd, *job]


def _job_env(config: cfg.Config | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if config is not None and config.training.num_machines == 1 and process_count(config) > 1:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # process-group sockets on loopback too
        env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(run: Run, config: cfg.Config | None = None, *, resume: bool = False,
          gpus: list[str] | None = None) -> int:
    """Start the job for ``run`` detached in its own session; returns the pid of what was started.

    The run's job lock is taken here (AlreadyRunning when another job holds it) and handed to
    the job process, which holds it for its whole life. ``gpus`` (the queue's choice) become
    its CUDA_VISIBLE_DEVICES."""
    config = config or run.config()
    cmd = job_command(run, config, resume=resume)
    launcher = "accelerate" if process_count(config) > 1 else None
    fd = joblock.acquire(run.dir, run.id, record=False)
    try:
        env = _job_env(config)
        env[joblock.LOCK_FD_ENV] = str(fd)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        with run_files.append_handle(run.log_path) as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} "
                      f"{'resume' if resume else 'start'}: {' '.join(cmd[1:])}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    close_fds=True, pass_fds=(fd,), env=env, cwd=str(run.dir))
        joblock.write_pid(fd, proc.pid)
    finally:
        joblock.release(run.dir)  # the job's inherited copy keeps the lock held
    run.update_state(pid=proc.pid, start_time=process_start_time(proc.pid),
                     host=socket.gethostname(), launcher=launcher,
                     processes=process_count(config), started=time.time(),
                     **({"gpus": gpus} if gpus is not None else {}))
    # Reap the child when it ends so a long-lived parent (the app) leaves no zombie behind.
    threading.Thread(target=proc.wait, name=f"reap-{run.id}", daemon=True).start()
    return proc.pid


# ---- public API -----------------------------------------------------------------------------

def start(config: cfg.Config, *, store: RunStore | None = None, check: bool = True,
          trust_remote_code: bool = False, progress: Callable[[str], None] | None = None
          ) -> Run:
    """Validate the data and preflight, create the run directory and start the job detached.

    Raises LoradeckError (nothing created) when the config, the data or the machine is not fit.
    ``progress`` gets the lines of work done before the launch (a GGUF's conversion).
    """
    run, warnings = create_checked(config, store=store, check=check,
                                   trust_remote_code=trust_remote_code, progress=progress)
    launch_created(run, warnings)
    return run


def create_checked(config: cfg.Config, *, store: RunStore | None = None, check: bool = True,
                   trust_remote_code: bool = False,
                   progress: Callable[[str], None] | None = None) -> tuple[Run, list[str]]:
    """The pre-launch checks, then the run directory (no job yet, no events): what ``start``
    and ``loradeck queue add`` share."""
    config = absolutize(config)
    warnings = check_before_start(config, trust_remote_code=trust_remote_code,
                                  progress=progress) if check else []
    return (store or RunStore()).create(config), warnings


def launch_created(run: Run, warnings: list[str] | None = None,
                   gpus: list[str] | None = None) -> int:
    """Start the job of a run made by ``create_checked`` (now, or later from the queue)."""
    events = EventWriter(run.events_path)
    events.status("queued", f"run {run.id} created")
    for text in warnings or []:
        events.log(text, level="warning")
    return spawn(run, run.config(), gpus=gpus)


def request_stop(run: Run) -> Path:
    """Ask the job to save a checkpoint at its current step and exit (it polls this file)."""
    path = run.stop_path
    run_files.write_text(path, json.dumps({"t": time.time(), "by": os.getpid()}))
    return path


def stop(run: Run, wait: bool = False, timeout: float | None = 120.0) -> dict:
    """Stop a running job gracefully: it saves a checkpoint, says ``stopped`` and exits.

    Returns the run summary (after the job ended when ``wait``; ``timeout`` None waits as long
    as it takes). Raises when the run is not alive, or is still alive after ``timeout``.
    """
    if not run.alive():
        phase = run.summary().get("phase")
        raise LoradeckError(f"run {run.id} is not running (phase {phase})", kind="usage",
                            hint=f"resume it with: loradeck resume {run.id}"
                            if phase in ("stopped", "failed") else None)
    # Every process of the job polls this file after each step (and before the first), so the
    # stop lands at a step boundary on all of them. No signal: one sent while the job is still
    # starting, before its handler is installed, would kill it instead. (The job does turn
    # SIGTERM and SIGINT into the same graceful stop, for `kill PID` and system shutdown.)
    request_stop(run)
    if wait:
        wait_until_ended(run, timeout)
    return run.summary()


def wait_until_ended(run: Run, timeout: float | None = None, poll: float = 0.2) -> dict:
    """Block until the job process has exited (or ``timeout``); returns the summary."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while run.alive():
        if deadline is not None and time.monotonic() > deadline:
            raise LoradeckError(f"run {run.id} is still running after {timeout:.0f}s",
                                kind="internal", hint=f"check it with: loradeck status {run.id}")
        time.sleep(poll)
    return run.summary()


def resume(run: Run, *, check: bool = True, trust_remote_code: bool = False) -> Run:
    """Start the job again in the same run directory, from its newest complete checkpoint.

    The job lock is taken first: of two resumes at the same instant, one starts the job and
    the other is refused (AlreadyRunning) before it writes anything."""
    joblock.acquire(run.dir, run.id, record=False)
    try:
        summary = summarize(run, run.events(), alive=False)  # the lock held is ours
        if summary["phase"] in FINISHED:
            raise LoradeckError(f"run {run.id} already finished", kind="usage",
                                hint="start a new run with: loradeck train CONFIG")
        config = run.config()
        warnings = check_before_start(config, trust_remote_code=trust_remote_code) \
            if check else []
        (run.stop_path).unlink(missing_ok=True)
        cp = run.latest_checkpoint()
        events = EventWriter(run.events_path)
        events.status("queued", f"resuming from {cp.name}" if cp else "resuming: no complete "
                      "checkpoint yet, starting from the beginning")
        for text in warnings:
            events.log(text, level="warning")
        spawn(run, config, resume=True)
    finally:
        joblock.release(run.dir)
    return run
