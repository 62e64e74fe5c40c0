"""nvidia-smi's output is read in one place (loradeck.engine.system.gpus): a stand-in
nvidia-smi on PATH answers as a two-GPU machine does."""

from __future__ import annotations

import os
import stat

from loradeck.engine.system import gpus
from loradeck.tui.screens import lora

FAKE = """#!/bin/sh
case "$1" in
  --query-gpu=index) printf '0\\n1\\n' ;;
  --query-gpu=memory.free) printf '81000\\n40000\\n' ;;
  --query-gpu=name,driver_version) printf 'NVIDIA H100 80GB HBM3, 570.86\\nNVIDIA H100 80GB HBM3, 570.86\\n' ;;
esac
"""


def test_a_stand_in_nvidia_smi_is_read_by_the_engine_for_the_app(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE)
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus.visible_count() == 2
    assert gpus.free_memory_gb() == round(81000 * 1024**2 / 1e9, 1)
    assert gpus.names_and_driver() == (["NVIDIA H100 80GB HBM3"] * 2, "570.86")
    assert lora.gpu_free_gb() == gpus.free_memory_gb()  # the LoRA screen asks the engine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpus.visible_count() == 1
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert gpus.smi_query("index") == [] and gpus.free_memory_gb() is None
