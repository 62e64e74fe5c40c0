"""What this machine can do: GPUs, CUDA, bitsandbytes, disk, Hub login, library versions.

Light at import: torch and bitsandbytes are imported inside the functions that probe them.
``DeviceInfo`` is the part preflight checks rely on; tests build one by hand to simulate
hardware they do not have.
"""

from __future__ import annotations

import contextlib
import io
import platform
import sys
import threading
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from loradeck.engine.models import quantization
from loradeck.engine.runs import paths
from loradeck.engine.train import disk

PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "bitsandbytes",
            "textual", "huggingface_hub")
HUB_TIMEOUT_S = 8.0


@dataclass
class GpuInfo:
    """One CUDA device."""

    index: int
    name: str
    total_gb: float
    free_gb: float | None
    capability: tuple[int, int]

    @property
    def bf16(self) -> bool:
        """bf16 compute needs compute capability 8.0 (Ampere) or more."""
        return tuple(self.capability) >= (8, 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["capability"] = f"{self.capability[0]}.{self.capability[1]}"
        d["bf16"] = self.bf16
        return d


@dataclass
class DeviceInfo:
    """The facts preflight checks need; ``bnb_ok`` None means bitsandbytes was not probed."""

    cuda_available: bool = False
    gpus: list[GpuInfo] = field(default_factory=list)
    bnb_ok: bool | None = None
    bnb_error: str | None = None
    bnb_version: str | None = None
    torch_cuda: str | None = None

    @property
    def bf16_supported(self) -> bool:
        return bool(self.gpus) and all(g.bf16 for g in self.gpus)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceInfo:
        gpus = [GpuInfo(g["index"], g["name"], g["total_gb"], g.get("free_gb"),
                        tuple(g["capability"])) for g in data.get("gpus", [])]
        return cls(cuda_available=data.get("cuda_available", False), gpus=gpus,
                   bnb_ok=data.get("bnb_ok"), bnb_error=data.get("bnb_error"),
                   bnb_version=data.get("bnb_version"), torch_cuda=data.get("torch_cuda"))

    @classmethod
    def detect_isolated(cls, *, probe_bnb: bool = True, timeout: float = 300) -> DeviceInfo:
        """Like detect(), but in a child process, so the caller (the app, the CLI) never
        imports torch or bitsandbytes. Used when torch is not already loaded."""
        code = ("import json, dataclasses; from loradeck.engine.system.doctor import DeviceInfo; "
                f"print(json.dumps(dataclasses.asdict(DeviceInfo.detect(probe_bnb={probe_bnb!r}))))")
        try:
            return cls.from_dict(run_child(code, timeout))
        except (ChildFailed, KeyError, TypeError):
            return cls.detect(probe_bnb=probe_bnb)

    @classmethod
    def for_preflight(cls, *, probe_bnb: bool) -> DeviceInfo:
        """The facts preflight needs, as cheaply as they can be had.

        Without an NVIDIA driver there is no CUDA device to ask torch about; with one, torch
        is asked in a child process (in this one when torch is loaded already). The 4-bit probe
        result comes from the cache while the versions and devices it was taken on stand."""
        light = "torch" not in sys.modules
        if not nvidia_present():
            info = cls(bnb_version=version("bitsandbytes"))
        elif light:
            info = cls.detect_isolated(probe_bnb=False)
        else:
            info = cls.detect(probe_bnb=False)
        if probe_bnb:
            device = "cuda" if info.cuda_available else "cpu"
            info.bnb_ok, info.bnb_error = cached_probe_4bit(device, isolated=light)
        return info

    @classmethod
    def detect(cls, *, probe_bnb: bool = True) -> DeviceInfo:
        """Look at this machine (imports torch; bitsandbytes only with ``probe_bnb``)."""
        info = cls()
        try:
            import torch
        except Exception:  # no torch at all: nothing can train here
            return info
        info.torch_cuda = torch.version.cuda
        info.cuda_available = bool(torch.cuda.is_available())
        info.gpus = list_gpus() if info.cuda_available else []
        info.bnb_version = version("bitsandbytes")
        if probe_bnb:
            info.bnb_ok, info.bnb_error = probe_4bit("cuda" if info.cuda_available else "cpu")
        return info


def version(package: str) -> str | None:
    """Installed version of ``package`` without importing it; None when not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def nvidia_present() -> bool:
    """A cheap look for an NVIDIA driver, before paying for a torch import."""
    import os
    import shutil

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia") or shutil.which("nvidia-smi") is not None
    return True


def list_gpus() -> list[GpuInfo]:
    """The CUDA devices torch sees (CUDA_VISIBLE_DEVICES applies)."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        try:
            free, _total = torch.cuda.mem_get_info(i)
            free_gb: float | None = round(free / 1e9, 2)
        except Exception:
            free_gb = None
        out.append(GpuInfo(i, props.name, round(props.total_memory / 1e9, 2), free_gb,
                           (props.major, props.minor)))
    return out


@contextlib.contextmanager
def _quiet():
    """Keep chatty imports off stdout and stderr (so --json stays JSON)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def probe_4bit(device: str) -> tuple[bool, str | None]:
    """Quantize a tiny layer to NF4 and run it forward on ``device``: (works, why not)."""
    try:
        with _quiet():
            import bitsandbytes as bnb
            import torch

            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=dtype,
                                      quant_type="nf4", compress_statistics=True).to(device)
            y = layer(torch.randn(2, 64, device=device, dtype=dtype))
            if device == "cuda":
                torch.cuda.synchronize()
            if tuple(y.shape) != (2, 64) or not bool(torch.isfinite(y).all()):
                return False, "a 4-bit layer gave a wrong result"
    except ImportError as exc:
        return False, f"bitsandbytes cannot be imported ({exc})"
    except Exception as exc:
        return False, f"a 4-bit layer failed on {device}: {type(exc).__name__}: {exc}"
    return True, None


# ---- running a probe in a child process, and remembering the 4-bit result ----------------

PROBE_CACHE = "probe-4bit.json"
PROBE_VERSION = 1  # bump when probe_4bit changes what it checks


class ChildFailed(Exception):
    """A probe child process crashed, timed out or printed no result."""


def run_child(code: str, timeout: float = 300) -> Any:
    """Run Python ``code`` in a child process of this interpreter; return the JSON its last line
    of output holds."""
    import json
    import os
    import subprocess

    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ), timeout=timeout, stdin=subprocess.DEVNULL)
    except (subprocess.SubprocessError, OSError) as exc:
        raise ChildFailed(f"{type(exc).__name__}: {exc}") from None
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ChildFailed(f"exit status {out.returncode}") from None


def nvidia_facts() -> dict[str, Any]:
    """GPU models and driver version, without torch: from the driver's files, else nvidia-smi."""
    import os
    from pathlib import Path

    proc = Path("/proc/driver/nvidia")
    names = []
    for info in sorted(proc.glob("gpus/*/information")):
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                names.append(line.split(":", 1)[1].strip())
    driver = None
    try:
        driver = (proc / "version").read_text(errors="replace").splitlines()[0].strip()
    except (OSError, IndexError):
        pass
    if not names:  # containers often lack the driver's files: ask nvidia-smi instead
        from loradeck.engine.system.gpus import names_and_driver

        names, smi_driver = names_and_driver()
        driver = driver or smi_driver
    return {"gpus": names, "driver": driver,
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def probe_key(device: str) -> dict[str, Any]:
    """What decides whether 4-bit works here, read without importing torch or bitsandbytes."""
    return {"probe": PROBE_VERSION, "python": sys.executable, "torch": version("torch"),
            "bitsandbytes": version("bitsandbytes"), "device": device,
            **(nvidia_facts() if device == "cuda" else {})}


def _cache_file():
    return paths.cache_dir() / PROBE_CACHE


def cached_probe(device: str) -> bool:
    """True when the cache holds a working 4-bit probe taken with this exact ``probe_key``."""
    import json

    try:
        saved = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and saved.get("ok") is True and \
        saved.get("key") == probe_key(device)


def remember_probe(device: str, ok: bool | None) -> None:
    """Store a working probe's key; forget any stored result when the probe failed."""
    import json
    import os
    import time

    path = _cache_file()
    try:
        if not ok:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"key": probe_key(device), "ok": True,
                                   "t": round(time.time(), 3)}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the next run a probe


def probe_4bit_isolated(device: str, timeout: float = 300) -> tuple[bool, str | None]:
    """probe_4bit in a child process; a child that crashes is a failed probe."""
    code = f"import json; from loradeck.engine.system.doctor import probe_4bit; print(json.dumps(probe_4bit({device!r})))"
    try:
        ok, why = run_child(code, timeout)
    except ChildFailed as exc:
        return False, f"the 4-bit probe crashed on {device} ({exc})"
    except (TypeError, ValueError):
        return False, f"the 4-bit probe on {device} gave no result"
    return bool(ok), why


def cached_probe_4bit(device: str, *, isolated: bool = True,
                      refresh: bool = False) -> tuple[bool, str | None]:
    """Whether 4-bit works on ``device``: from the cache when the versions, interpreter and
    GPUs match, else probed (in a child process when ``isolated``) and remembered."""
    if not refresh and cached_probe(device):
        return True, None
    ok, why = probe_4bit_isolated(device) if isolated else probe_4bit(device)
    remember_probe(device, ok)
    return ok, why


def hub_login() -> dict[str, Any]:
    """Hub login state: never the token itself."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        return {"logged_in": False, "user": None, "state": "not logged in"}
    result: dict[str, Any] = {}

    def ask() -> None:
        from huggingface_hub import whoami

        try:
            me = whoami(token=token)
            result["user"] = me.get("name")
        except Exception as exc:
            result["error"] = type(exc).__name__

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(HUB_TIMEOUT_S)
    if result.get("user"):
        return {"logged_in": True, "user": result["user"], "state": f"logged in as {result['user']}"}
    err = result.get("error")
    if err in ("HfHubHTTPError", "HTTPError") or (err or "").endswith("Unauthorized"):
        state = "token set, but the Hub did not accept it (expired or revoked?)"
    elif err == "OfflineModeIsEnabled":
        state = "token set (not checked: offline mode)"
    else:
        state = "token set (not checked: the Hub did not answer)"
    return {"logged_in": True, "user": None, "state": state}


def report(*, probe_bnb: bool = True, check_hub: bool = True) -> dict[str, Any]:
    """Everything ``loradeck doctor`` shows, as plain data."""
    dev = DeviceInfo.detect(probe_bnb=probe_bnb)
    if probe_bnb and dev.bnb_version is not None:  # doctor always probes: refresh the cache
        remember_probe("cuda" if dev.cuda_available else "cpu", dev.bnb_ok)
    try:
        import torch

        cudnn = torch.backends.cudnn.version() if dev.cuda_available else None
    except Exception:
        cudnn = None
    store = paths.home()
    try:
        disk_info = {"path": str(store), "free_gb": round(disk.free_gb(store), 2),
                     "total_gb": round(disk.total_gb(store), 2)}
    except Exception as exc:  # a bad LORADECK_FAKE_FREE_GB or an unreadable mount
        disk_info = {"path": str(store), "free_gb": None, "total_gb": None, "error": str(exc)}
    return {
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "cuda": {"available": dev.cuda_available, "torch_cuda": dev.torch_cuda,
                 "cudnn": cudnn, "device_count": len(dev.gpus)},
        "gpus": [g.to_dict() for g in dev.gpus],
        "bf16": dev.bf16_supported,
        "bitsandbytes": {"version": dev.bnb_version, "importable": _importable(dev),
                         "four_bit": dev.bnb_ok, "device": "cuda" if dev.cuda_available else "cpu",
                         "error": dev.bnb_error},
        "quantization_auto": dict(zip(("choice", "why"), quantization.choose(
            "auto", "cuda" if dev.cuda_available else "cpu"), strict=True)),
        "disk": disk_info,
        "hub": hub_login() if check_hub else {"logged_in": None, "user": None,
                                              "state": "not checked"},
        "versions": {p: version(p) for p in PACKAGES},
    }


def _importable(dev: DeviceInfo) -> bool | None:
    """Installed and importable; None when installed but not probed."""
    if dev.bnb_version is None:
        return False
    if dev.bnb_ok is None:
        return None
    return not (dev.bnb_error or "").startswith("bitsandbytes cannot be imported")


def text(rep: dict[str, Any]) -> list[str]:
    """The report as lines for a person."""
    py = rep["python"]
    cuda = rep["cuda"]
    bnb = rep["bitsandbytes"]
    lines = [f"python        {py['version']} ({py['executable']})"]
    if cuda["available"]:
        lines.append(f"CUDA          available: torch built for CUDA {cuda['torch_cuda']}, "
                     f"cuDNN {cuda['cudnn']}, {cuda['device_count']} GPU(s)")
    else:
        built = f"torch built for CUDA {cuda['torch_cuda']}" if cuda["torch_cuda"] \
            else "torch built without CUDA"
        lines.append(f"CUDA          not available ({built}): training runs on the CPU")
    for g in rep["gpus"]:
        free = f"{g['free_gb']:.1f} GB free of " if g["free_gb"] is not None else ""
        lines.append(f"GPU {g['index']:<9} {g['name']}: {free}{g['total_gb']:.1f} GB, "
                     f"compute capability {g['capability']}, "
                     f"bf16 {'yes' if g['bf16'] else 'no (use compute_dtype fp16)'}")
    if not rep["gpus"]:
        lines.append("GPUs          none found")
    if bnb["version"] is None:
        lines.append("bitsandbytes  not installed: 4-bit and 8-bit quantization unavailable")
    elif bnb["four_bit"]:
        lines.append(f"bitsandbytes  {bnb['version']}: importable, 4-bit works on {bnb['device']}")
    elif bnb["four_bit"] is None:
        lines.append(f"bitsandbytes  {bnb['version']}: not probed")
    else:
        lines.append(f"bitsandbytes  {bnb['version']}: 4-bit does not work on {bnb['device']}: "
                     f"{bnb['error']} (set model.quantization: none)")
    auto = rep.get("quantization_auto")
    if auto:
        lines.append(f"quantization  auto trains with {auto['choice']} here: {auto['why']}")
    d = rep["disk"]
    if d.get("free_gb") is None:
        lines.append(f"disk          {d['path']}: cannot measure ({d.get('error')})")
    else:
        lines.append(f"disk          {d['path']}: {d['free_gb']:.1f} GB free of "
                     f"{d['total_gb']:.1f} GB")
    hub = rep["hub"]
    hint = "" if hub["logged_in"] or hub["logged_in"] is None else \
        " (log in with `hf auth login` or set HF_TOKEN to push and to use gated models)"
    lines.append(f"Hub           {hub['state']}{hint}")
    versions = "  ".join(f"{k} {v or 'missing'}" for k, v in rep["versions"].items())
    lines.append(f"versions      {versions}")
    return lines
