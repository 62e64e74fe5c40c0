"""Model sources: demo:tiny, local directories, Hub ids through the HF cache, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loradeck.engine import units
from loradeck.engine.config import ModelSection
from loradeck.engine.errors import LoradeckError
from loradeck.engine.models import loading as models
from tests.conftest import ROOT
from tests.helpers.hub_server import serve


def test_demo_is_deterministic_and_described(demo_model, tmp_path):
    from loradeck.engine.models import demo

    again = demo.build(tmp_path / "again")
    a = (demo_model / "model.safetensors").read_bytes()
    b = (again / "model.safetensors").read_bytes()
    assert a == b
    assert (demo_model / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    info = models.describe("demo:tiny")
    assert info["architecture"] == "LlamaForCausalLM" and info["layers"] == 2
    assert info["parameters"] == 532352  # matches the real count, checked below


def test_local_directory_loads_with_chat_template(demo_model, tmp_path):
    import shutil

    local = tmp_path / "my-model"
    shutil.copytree(demo_model, local)
    src = models.resolve_source(str(local))
    assert src.kind == "local" and src.path == local
    tok = models.load_tokenizer(ModelSection(name=str(local)))
    text = tok.apply_chat_template([{"role": "user", "content": "서울은 어디?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert "<|im_start|>assistant" in text and "서울은 어디?" in text
    model = models.load_model(ModelSection(name=str(local), quantization="none"))
    assert sum(p.numel() for p in model.parameters()) == models.describe(str(local))["parameters"]
    assert models.footprint_gb(model) > 0


def test_trust_remote_code_stays_off():
    assert ModelSection().trust_remote_code is False


@pytest.mark.parametrize("name, kind, text", [
    ("./no-such-dir", "model", "model directory not found"),
    ("bad name!!", "config", "neither a directory nor a Hub id"),
    ("", "config", "no model given"),
])
def test_bad_sources_get_one_line(name, kind, text):
    with pytest.raises(LoradeckError) as info:
        models.resolve_source(name)
    assert info.value.kind == kind and text in info.value.line()


def test_directory_without_config(tmp_path):
    with pytest.raises(LoradeckError, match="no config.json"):
        models.resolve_source(str(tmp_path))


def test_offline_hub_model_not_in_cache():
    with pytest.raises(LoradeckError) as info:
        models.load_tokenizer(ModelSection(name="some-org/not-downloaded"))
    line = info.value.line()
    assert info.value.kind == "network" and "not in the local cache" in line
    assert "some-org/not-downloaded" in line


def test_gated_and_missing_errors_say_what_to_do():
    from huggingface_hub import errors as hf

    src = models.ModelSource("hub", "org/m", None, "org/m")
    resp = type("R", (), {"headers": {}, "status_code": 403, "request": None, "url": "x"})()
    gated = models.hub_error(hf.GatedRepoError("gated", response=resp), src)
    assert gated.kind == "auth" and "accept its licence" in gated.line()
    missing = models.hub_error(hf.RepositoryNotFoundError("404", response=resp), src)
    assert missing.kind == "model" and "check the spelling" in missing.line()


def _py(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                          timeout=240)


def test_hub_id_through_cache_listing_and_offline_load(demo_model, tmp_path):
    """A Hub model downloaded once is listed with its size and loads offline by its id."""
    files = {p.name: p.read_bytes() for p in demo_model.iterdir() if p.is_file()}
    hf_home = tmp_path / "hf"
    with serve(tmp_path / "hub") as server:
        server.add_repo("tester/tiny-chat", files=files)
        got = _py("from huggingface_hub import snapshot_download;"
                  "print(snapshot_download('tester/tiny-chat'))",
                  {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0", "HF_HOME": str(hf_home)})
        assert got.returncode == 0, got.stderr[-2000:]
        missing = _py("from loradeck.engine.models import loading as models; from loradeck.engine.config import ModelSection\n"
                      "try:\n    models.load_tokenizer(ModelSection(name='tester/nope'))\n"
                      "except Exception as e:\n    print(type(e).__name__, e.kind, e.line())",
                      {"HF_ENDPOINT": server.url, "HF_HUB_OFFLINE": "0",
                       "HF_HOME": str(hf_home)})
        assert "LoradeckError model" in missing.stdout, missing.stderr[-2000:]
        assert "no such model" in missing.stdout
    code = (
        "import json; from loradeck.engine.models import loading as models; from loradeck.engine.config import ModelSection\n"
        "cached = models.list_cached_models()\n"
        "m = ModelSection(name='tester/tiny-chat', quantization='none')\n"
        "model = models.load_model(m); tok = models.load_tokenizer(m)\n"
        "print(json.dumps({'cached': [(c['id'], c['size_bytes']) for c in cached],"
        " 'params': sum(p.numel() for p in model.parameters()),"
        " 'template': bool(tok.chat_template), 'described': models.describe('tester/tiny-chat')}))"
    )
    out = _py(code, {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)})
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    size = sum(len(b) for b in files.values())
    assert data["cached"] == [["tester/tiny-chat", size]]
    assert data["params"] == 532352 and data["template"]
    assert data["described"]["architecture"] == "LlamaForCausalLM"


def test_counts_read_as_a_person_reads_them():
    assert units.count(7_241_732_096) == "7.2B"
    assert units.count(532_352) == "532.4K"
    assert units.count(None) == "?"
