"""Checkpoints and the adapter: disk checks before saving, the adapter's weights verified
after a resume (sharded FSDP checkpoints too), the final adapter saved, old checkpoints rotated
once a new one is complete, and the collective helpers the processes of a job agree with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loradeck.engine.errors import LoradeckError
from loradeck.engine.runs.store import COMPLETE_MARKER, Run
from loradeck.engine.train import disk


def memory_gb(device: str) -> float:
    """Peak CUDA memory allocated, else the process's resident memory, in GB."""
    if device == "cuda":
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.max_memory_allocated() / 1e9, 3)
    from loradeck.engine.system.sampler import process_rss_gb

    return process_rss_gb()


def check_disk(path: Path, need_gb: float, what: str) -> None:
    """Raise a ``disk`` LoradeckError when less than ``need_gb`` is free at ``path``."""
    disk.check_free(path, need_gb, what, hint="free some space, then resume the run: its last "
                    "complete checkpoint is kept")


def adapter_tensors(model) -> dict[str, Any]:
    """The adapter's weights by the names they are saved under."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def checksum(tensors: dict[str, Any]) -> float:
    """Sum of absolute values over all tensors (float64): equal weights give equal sums."""
    total = 0.0
    for _, t in sorted(tensors.items()):
        total += float(t.detach().double().abs().sum().item())
    return round(total, 6)


FSDP_MODEL_DIR = "pytorch_model_fsdp_0"  # accelerate's sharded (DCP) model state in a checkpoint


def read_sharded_checkpoint(path: Path) -> dict[str, Any]:
    """The tensors of a torch.distributed.checkpoint directory, whole, in this process."""
    import tempfile

    import torch
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "state.pt")
        state = torch.load(Path(tmp) / "state.pt", weights_only=True)
    return state.get("model", state)


def verify_loaded_adapter(model, checkpoint: Path) -> dict[str, Any]:
    """Compare the model's adapter weights with the checkpoint's; raise if they differ.

    Under FSDP every process must call it (the live weights are gathered from the shards)."""
    import torch
    from safetensors.torch import load_file

    if (checkpoint / FSDP_MODEL_DIR).is_dir():  # sharded (FSDP): gather, read the shards
        live = {k: getattr(v, "full_tensor", lambda v=v: v)().detach().cpu()
                for k, v in sorted(adapter_tensors(model).items())}  # every process, same order
        saved = read_sharded_checkpoint(checkpoint / FSDP_MODEL_DIR)
    else:
        saved = load_file(str(checkpoint / "adapter_model.safetensors"))
        live = adapter_tensors(model)
    missing = sorted(set(saved) - set(live))
    differ = [k for k in saved if k in live and not torch.equal(
        live[k].detach().cpu().to(saved[k].dtype), saved[k])]
    if missing or differ:
        raise LoradeckError(f"the adapter weights in {checkpoint.name} did not load "
                            f"({len(missing)} missing, {len(differ)} different tensors)",
                            kind="internal", where=str(checkpoint),
                            hint="start a new run, or resume from an earlier checkpoint")
    return {"tensors": len(saved), "adapter_checksum": checksum(live)}


def save_final_adapter(trainer, path: Path) -> None:
    """Save the trained adapter as a PEFT adapter dir (every process calls this).

    Under FSDP the checkpoints hold sharded state, which ``save_model`` skips; for the final
    adapter every process gathers the full state dict (FULL_STATE_DICT, to the main process's
    CPU) and the main process writes adapter_model.safetensors and adapter_config.json."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(path))


def agree(flags: list[bool], device: Any) -> list[bool]:
    """Across processes: each flag true when any process has it true (identity when alone)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rotate_checkpoints(run: Run, keep: int, newest: Path) -> list[str]:
    """Delete the oldest complete checkpoints beyond ``keep``; ``newest`` (just marked
    complete) is never one of them. Runs only after the new checkpoint is complete, so a crash
    at any moment leaves at least one complete checkpoint to resume from."""
    import shutil

    old = [cp for cp in run.checkpoints() if cp != newest]
    drop = old[: max(len(old) - (keep - 1), 0)]
    for cp in drop:
        (cp / COMPLETE_MARKER).unlink(missing_ok=True)  # no longer counts, even half-deleted
        shutil.rmtree(cp, ignore_errors=True)
    return [cp.name for cp in drop]
