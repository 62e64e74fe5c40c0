"""The 4-bit preflight probe is cached per interpreter, versions and devices: a light process
(the CLI, the app) that finds a matching cache never starts the probe or imports torch; a
version change or a failed probe means probing again; `loradeck doctor` always re-probes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from loradeck.engine.system import doctor
from tests.conftest import ROOT, run_cli

CHECK = ("import sys; from loradeck.engine.train import launch; from loradeck.engine import config\n"
         "try:\n"
         "    launch.check_before_start(config.from_overrides(['model.quantization=4bit']))\n"
         "    print('ok')\n"
         "except Exception as exc:\n"
         "    print('refused:', exc)\n"
         "print(sorted(m for m in ('torch', 'bitsandbytes') if m in sys.modules))\n")


def broken_bnb(tmp_path: Path, version: str | None) -> Path:
    """A directory that shadows bitsandbytes with one that cannot be imported, and, with
    ``version``, a distribution of that version (the metadata the cache key reads)."""
    root = tmp_path / f"broken-{version}"
    (root / "bitsandbytes").mkdir(parents=True)
    (root / "bitsandbytes" / "__init__.py").write_text(
        "raise ImportError('simulated broken build')\n")
    if version:
        info = root / f"bitsandbytes-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: bitsandbytes\n"
                                       f"Version: {version}\n")
    return root


def light_check(cache: Path, shadow: Path | None = None) -> tuple[str, list[str]]:
    """check_before_start for a 4-bit config in a fresh light process, as the CLI runs it."""
    env = dict(os.environ, LORADECK_CACHE=str(cache))
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in (shadow, ROOT) if p])
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=300, cwd=str(ROOT), env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    verdict, modules = out.stdout.strip().splitlines()[-2:]
    return verdict, json.loads(modules.replace("'", '"'))


def test_cached_probe_skips_the_probe_until_a_version_changes(demo_model, tmp_path):
    cache = tmp_path / "cache"
    # a miss: probed in a child process, remembered, and this process stays light
    assert light_check(cache) == ("ok", [])
    saved = json.loads((cache / doctor.PROBE_CACHE).read_text())
    assert saved["ok"] is True and saved["key"] == doctor.probe_key("cpu")
    assert saved["key"]["bitsandbytes"] == doctor.version("bitsandbytes")

    # a hit: bitsandbytes is now broken but its version is the same, so nothing probes it
    # (a probe would refuse the run) and torch is never imported
    same = broken_bnb(tmp_path, None)
    assert light_check(cache, same) == ("ok", [])

    # another bitsandbytes version: the cache no longer applies, the probe runs and refuses
    other = broken_bnb(tmp_path, "9.9.9")
    verdict, modules = light_check(cache, other)
    assert verdict.startswith("refused:") and "bitsandbytes cannot be imported" in verdict
    assert "model.quantization" in verdict and modules == []
    # a failed probe is not remembered as working: broken again at the cached version refuses
    assert not (cache / doctor.PROBE_CACHE).exists()
    verdict, _ = light_check(cache, same)
    assert verdict.startswith("refused:") and "simulated broken build" in verdict


def test_doctor_always_reprobes_and_refreshes_the_cache(demo_model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORADECK_CACHE", str(cache))
    doctor.remember_probe("cpu", True)  # what a working probe leaves
    assert light_check(cache) == ("ok", [])
    # doctor sees the broken build although the cache said 4-bit works, and forgets it
    same = broken_bnb(tmp_path, None)
    env = {"LORADECK_CACHE": str(cache), "PYTHONPATH": f"{same}{os.pathsep}{ROOT}"}
    r = run_cli(["doctor", "--json"], env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bitsandbytes"]["four_bit"] is False
    assert not (cache / doctor.PROBE_CACHE).exists()
    assert light_check(cache, same)[0].startswith("refused:")
    # and a working doctor run writes it back
    r = run_cli(["doctor", "--json"], env={"LORADECK_CACHE": str(cache)})
    assert json.loads(r.stdout)["bitsandbytes"]["four_bit"] is True
    assert json.loads((cache / doctor.PROBE_CACHE).read_text())["key"] == doctor.probe_key("cpu")


def test_probe_key_reads_versions_without_importing(monkeypatch, tmp_path):
    monkeypatch.setenv("LORADECK_CACHE", str(tmp_path))
    key = doctor.probe_key("cpu")
    assert key["python"] == sys.executable and key["device"] == "cpu"
    assert key["torch"] == doctor.version("torch")
    doctor.remember_probe("cpu", True)
    assert doctor.cached_probe("cpu")
    assert not doctor.cached_probe("cuda")  # another device kind: probe again
    monkeypatch.setattr(doctor, "PROBE_VERSION", doctor.PROBE_VERSION + 1)
    assert not doctor.cached_probe("cpu")

