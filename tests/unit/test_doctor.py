"""``loradeck doctor``, the preflight refusals (simulated V100, broken bitsandbytes) and disk
checks (LORADECK_FAKE_FREE_GB)."""

from __future__ import annotations

import json

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from loradeck.engine.system import doctor
from loradeck.engine.system.doctor import DeviceInfo, GpuInfo
from loradeck.engine.train import disk, preflight
from tests.conftest import run_cli

TOKEN = "hf_doctorTestSecretToken0123456789"

V100 = GpuInfo(0, "Tesla V100-SXM2-16GB", 16.9, 16.0, (7, 0))
A100 = GpuInfo(0, "NVIDIA A100-SXM4-80GB", 85.1, 84.0, (8, 0))


def gpu_box(*gpus: GpuInfo, bnb_ok: bool = True) -> DeviceInfo:
    return DeviceInfo(cuda_available=True, gpus=list(gpus), bnb_ok=bnb_ok,
                      bnb_error=None if bnb_ok else "CUDA Setup failed (simulated)")


CPU_BOX = DeviceInfo(cuda_available=False, gpus=[], bnb_ok=True)
BROKEN_BNB = DeviceInfo(cuda_available=False, gpus=[], bnb_ok=False,
                        bnb_error="bitsandbytes cannot be imported (simulated)")


def config(**sets) -> cfg.Config:
    return cfg.from_overrides([f"{k}={v}" for k, v in sets.items()], base=cfg.demo_config())


# ---- doctor ----------------------------------------------------------------------------------

def test_doctor_json_reports_the_machine_and_never_the_token(loradeck_home):
    r = run_cli(["doctor", "--json"], env={"HF_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    assert TOKEN not in r.stdout + r.stderr and TOKEN[3:15] not in r.stdout + r.stderr
    rep = json.loads(r.stdout)
    assert {"python", "cuda", "gpus", "bf16", "bitsandbytes", "disk", "hub", "versions"} <= set(rep)
    assert rep["cuda"]["available"] is False and rep["gpus"] == []  # this machine: CPU only
    assert rep["bitsandbytes"]["importable"] is True
    assert rep["bitsandbytes"]["four_bit"] is True and rep["bitsandbytes"]["device"] == "cpu"
    assert rep["disk"]["path"] == str(loradeck_home) and rep["disk"]["free_gb"] > 0
    assert rep["hub"]["logged_in"] is True and rep["hub"]["state"].startswith("token set")
    for pkg in ("torch", "transformers", "peft", "trl", "accelerate", "datasets",
                "bitsandbytes", "textual"):
        assert rep["versions"][pkg], pkg
    assert rep["python"]["version"].startswith("3.")


def test_doctor_text_for_a_person(loradeck_home):
    r = run_cli(["doctor"], env={"HF_TOKEN": TOKEN, "LORADECK_FAKE_FREE_GB": "12.5"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert TOKEN not in out + r.stderr
    assert "CUDA          not available" in out and "GPUs          none found" in out
    assert "4-bit works on cpu" in out
    assert f"{loradeck_home}: 12.5 GB free" in out
    assert "Hub           token set" in out
    assert "torch 2." in out and "textual 8." in out


def test_hub_login_state_without_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    state = doctor.hub_login()
    assert state == {"logged_in": False, "user": None, "state": "not logged in"}
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    state = doctor.hub_login()
    assert state["logged_in"] is True and TOKEN not in json.dumps(state)


def test_gpu_bf16_follows_compute_capability():
    assert not V100.bf16 and A100.bf16
    assert V100.to_dict()["capability"] == "7.0"
    assert gpu_box(A100).bf16_supported and not gpu_box(A100, V100).bf16_supported


# ---- preflight -------------------------------------------------------------------------------

def test_bf16_on_a_v100_is_refused_with_the_reason():
    with pytest.raises(LoradeckError) as err:
        preflight.check(config(**{"model.compute_dtype": "bf16"}), gpu_box(V100))
    e = err.value
    assert e.kind == "config" and e.where == "model.compute_dtype"
    assert "compute capability 7.0" in e.message and "8.0" in e.message
    assert "fp16" in e.hint
    # auto picks fp16 there, and an A100 takes bf16
    assert isinstance(preflight.check(config(), gpu_box(V100)), list)
    assert isinstance(preflight.check(config(**{"model.compute_dtype": "bf16"}), gpu_box(A100)),
                      list)


def test_fp16_on_cpu_is_refused():
    with pytest.raises(LoradeckError) as err:
        preflight.check(config(**{"model.compute_dtype": "fp16"}), CPU_BOX)
    assert err.value.where == "model.compute_dtype" and "CPU" in err.value.message
    assert preflight.check(config(**{"model.compute_dtype": "bf16"}), CPU_BOX) == []


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantization_without_working_bitsandbytes_is_refused(quant):
    with pytest.raises(LoradeckError) as err:
        preflight.check(config(**{"model.quantization": quant}), BROKEN_BNB)
    e = err.value
    assert e.kind == "config" and e.where == "model.quantization"
    assert "bitsandbytes" in e.message and "simulated" in e.message
    assert "model.quantization: none" in e.hint
    with pytest.raises(LoradeckError, match="CUDA Setup failed"):
        preflight.check(config(**{"model.quantization": quant}), gpu_box(A100, bnb_ok=False))
    assert preflight.check(config(**{"model.quantization": "none"}), BROKEN_BNB) == []


def test_cuda_device_without_cuda_is_refused():
    with pytest.raises(LoradeckError) as err:
        preflight.check(config(**{"training.device": "cuda"}), CPU_BOX)
    assert err.value.where == "training.device"


def test_more_processes_than_gpus_is_refused_but_cpu_processes_are_allowed():
    with pytest.raises(LoradeckError) as err:
        preflight.check(config(**{"training.num_processes": 2}), gpu_box(A100))
    assert err.value.where == "training.num_processes" and "has 1" in err.value.message
    two = GpuInfo(1, A100.name, A100.total_gb, A100.free_gb, A100.capability)
    assert preflight.check(config(**{"training.num_processes": 2}), gpu_box(A100, two)) == []
    warnings = preflight.check(config(**{"training.num_processes": 2}), CPU_BOX)
    assert any("gloo" in w for w in warnings)


def test_a_run_too_big_for_the_gpu_gets_a_warning():
    c = config(**{"model.name": "mistralai/Mistral-7B-v0.3", "model.quantization": "none",
                  "model.compute_dtype": "fp16", "training.batch_size": 4,
                  "training.max_length": 1024})
    warnings = preflight.check(c, gpu_box(V100))
    assert any("likely out of memory" in w and "V100" in w for w in warnings)
    assert any("--set model.quantization=4bit" in w for w in warnings)


def test_preflight_detects_this_machine():
    # CPU only here: the demo config (no quantization) passes with the real facts
    assert preflight.check(config()) == []


# ---- disk ------------------------------------------------------------------------------------

def test_free_gb_measures_and_can_be_faked(tmp_path, monkeypatch):
    monkeypatch.delenv(disk.FAKE_ENV, raising=False)
    real = disk.free_gb(tmp_path / "not" / "made" / "yet")
    assert real > 0
    monkeypatch.setenv(disk.FAKE_ENV, "0.25")
    assert disk.free_gb(tmp_path) == 0.25
    monkeypatch.setenv(disk.FAKE_ENV, "lots")
    with pytest.raises(LoradeckError, match=disk.FAKE_ENV):
        disk.free_gb(tmp_path)


def test_check_free_raises_a_disk_error_in_words(tmp_path, monkeypatch):
    monkeypatch.setenv(disk.FAKE_ENV, "0.5")
    assert disk.check_free(tmp_path, 0.4, "checkpoint-50") == 0.5
    with pytest.raises(LoradeckError) as err:
        disk.check_free(tmp_path, 2.0, "checkpoint-50")
    e = err.value
    assert e.kind == "disk" and e.where == str(tmp_path)
    assert "checkpoint-50" in e.message and "2.00 GB needed" in e.message
    assert "0.50 GB free" in e.message and e.hint
    assert e.to_event()["kind"] == "disk"


def test_checkpoint_sizes():
    # 40M trainable parameters: fp32 adapter and two fp32 Adam moments, plus small files
    assert disk.estimate_checkpoint_gb(40_000_000) == pytest.approx(0.48 + 0.05)
    assert disk.estimate_checkpoint_gb(40_000_000, optimizer=False) == pytest.approx(0.16 + 0.05)
    assert disk.estimate_run_gb(40_000_000, save_total_limit=3) == pytest.approx(
        4 * 0.53 + 0.21)


def test_preflight_refuses_a_full_disk(monkeypatch, loradeck_home):
    monkeypatch.setenv(disk.FAKE_ENV, "0.01")
    with pytest.raises(LoradeckError) as err:
        preflight.check(config(), CPU_BOX)
    assert err.value.kind == "disk" and "runs" in err.value.where
    assert "LORADECK_HOME" in err.value.hint
    monkeypatch.setenv(disk.FAKE_ENV, "50")
    assert preflight.check(config(), CPU_BOX) == []


def test_preflight_from_a_light_process_never_loads_torch(demo_model):
    """Starting a run from the app checks the device in a child process, so the app stays light."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = ("import sys; from loradeck.engine.train import launch; from loradeck.engine import config; "
            "launch.check_before_start(config.from_overrides(['model.quantization=4bit'])); "
            "print(sorted(m for m in ('torch', 'bitsandbytes', 'transformers', 'datasets') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
