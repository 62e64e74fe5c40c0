"""accelerate runs its FSDP2 path on a CPU machine (gloo), as it does on GPUs.

Checked against accelerate 1.15 and torch 2.13. torch's FSDP2 (``fully_shard``) shards on a CPU
device mesh with gloo, but accelerate's AcceleratorState turns FSDP on only for accelerator
devices: on CPU it keeps MULTI_CPU and drops the plugin, and the Trainer would silently run DDP.
``apply()`` makes a MULTI_CPU state given an FSDP plugin an FSDP state, which is what the GPU
branch of AcceleratorState does. Applied by the trainer for an FSDP job on CPU.
"""

from __future__ import annotations

from typing import Any

from loradeck.engine.errors import LoradeckError

CHECKED_WITH = {"accelerate": "1.15.0", "torch": "2.13.0"}


def apply() -> None:
    """Let accelerate run its FSDP2 path on a CPU machine (gloo), as it does on GPUs.

    torch's FSDP2 (``fully_shard``) shards on a CPU device mesh with gloo, but accelerate's
    AcceleratorState turns FSDP on only for accelerator devices: on CPU it keeps MULTI_CPU and
    drops the plugin, and the Trainer would silently run DDP. This makes a MULTI_CPU state
    given an FSDP plugin an FSDP state, which is what the GPU branch of AcceleratorState does.
    """
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "loradeck_cpu_fsdp", False):
        return

    def __init__(self, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        # Every later AcceleratorState() copies the process state (MULTI_CPU) back in: the
        # plugin, kept in the shared state, says FSDP again each time.
        plugin = fsdp_plugin or self.__dict__.get("fsdp_plugin")
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            if plugin.fsdp_version != 2:
                raise LoradeckError("FSDP on CPU needs FSDP2 (fsdp_version 2)", kind="internal")
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin

    __init__.loradeck_cpu_fsdp = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = __init__
