"""Merging a run's adapter into its base: RUN/merged, the 16-bit reload of 4-bit runs, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loradeck.engine.errors import LoradeckError
from loradeck.engine.publish.merge import merge_run
from loradeck.engine.runs.store import Run
from tests.conftest import run_cli, teardown_env
from tests.helpers.run_fixtures import make_finished_run

PROMPTS = ["What is LoRA?", "안녕하세요, 자기소개를 해 주세요.", "Name three colours."]


@pytest.fixture(scope="module")
def merged_run(demo_model, tmp_path_factory) -> Run:
    run = make_finished_run(root=tmp_path_factory.mktemp("runs"))
    merge_run(run)
    return run


def greedy(model, tok, text: str, n: int = 16) -> list[int]:
    import torch

    enc = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=n,
                             pad_token_id=tok.pad_token_id)
    return out[0, enc["input_ids"].shape[1]:].tolist()


def test_merged_model_loads_with_transformers_and_matches_base_plus_adapter(merged_run,
                                                                            demo_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loradeck.engine.models.demo import CHAT_TEMPLATE

    path = merged_run.merged_dir
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (path / name).is_file(), name
    assert not list(path.glob("*.bin")) and not list(merged_run.dir.glob(".merged-tmp-*"))
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template == CHAT_TEMPLATE
    merged = AutoModelForCausalLM.from_pretrained(path)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model),
                                     merged_run.adapter_dir)
    base = AutoModelForCausalLM.from_pretrained(demo_model)
    differs = False
    for text in PROMPTS:
        expected = greedy(peft, tok, text)
        assert greedy(merged, tok, text) == expected, text
        differs |= greedy(base, tok, text) != expected
    assert differs, "the adapter should change the base model's output"


def test_merge_reports_phases_and_the_check_in_events(merged_run):
    events = merged_run.events()
    phases = [e["phase"] for e in events if e["type"] == "status"]
    assert phases[-2:] == ["merging", "merged"]
    info = [e["merge"] for e in events if e["type"] == "info" and "merge" in e][-1]
    assert info["check"]["tokens_match"] is True
    assert 0 <= info["check"]["max_logit_diff"] < 1e-3
    assert info["path"] == str(merged_run.merged_dir)
    assert merged_run.summary()["phase"] == "merged"


def test_failed_merge_leaves_the_earlier_merge_intact(merged_run):
    weights = merged_run.merged_dir / "model.safetensors"
    before = weights.read_bytes()
    adapter_file = merged_run.adapter_dir / "adapter_model.safetensors"
    good = adapter_file.read_bytes()
    adapter_file.write_bytes(b"not a safetensors file")
    try:
        with pytest.raises(LoradeckError, match="merge failed"):
            merge_run(merged_run)
    finally:
        adapter_file.write_bytes(good)
    assert weights.read_bytes() == before
    assert not list(merged_run.dir.glob(".merged-tmp-*"))
    events = merged_run.events()
    assert events[-1]["type"] == "status" and events[-1]["phase"] == "merged"
    assert events[-2]["type"] == "error"
    assert merged_run.summary()["phase"] == "merged"


def test_cli_merges_a_4bit_run_in_16bit(demo_model, tmp_path):
    from safetensors import safe_open

    run = make_finished_run("4bit")
    env, torn = teardown_env(tmp_path)
    res = run_cli(["merge", run.id], env=env)
    assert res.returncode == 0, res.stderr
    # the command ends with its last line: no teardown of torch and the models it loaded
    assert list(torn.iterdir()) == []
    assert "4bit" in res.stdout and "never merged into quantized weights" in res.stdout
    assert "largest logit difference" in res.stdout and "same greedy tokens" in res.stdout
    assert str(run.merged_dir) in res.stdout
    config = json.loads((run.merged_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] in ("float32", "bfloat16", "float16")
    with safe_open(run.merged_dir / "model.safetensors", "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes <= {"F32", "BF16", "F16"}, dtypes


def test_cli_merge_without_adapter_is_one_line_and_fails(demo_model):
    run = make_finished_run(adapter=False)
    res = run_cli(["merge", run.id])
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no adapter" in lines[0] and run.id in lines[0]
    assert not run.merged_dir.exists()


def test_merge_process_as_the_app_runs_it_ends_with_its_last_line(demo_model, tmp_path):
    """``python -m loradeck.engine.publish.merge RUN_DIR`` (the Push screen's merge) prints its result and is
    gone right after its last event: no interpreter teardown with the model loaded (0.65 s of
    it here), which the app would wait for."""
    run = make_finished_run()
    probe, torn = teardown_env(tmp_path)
    env = dict(os.environ, **probe)
    res = subprocess.run([sys.executable, "-m", "loradeck.engine.publish.merge", str(run.dir)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.rstrip().endswith(f"merged model: {run.merged_dir}")
    assert run.events()[-1]["phase"] == "merged"
    assert (run.merged_dir / "model.safetensors").is_file()
    assert list(torn.iterdir()) == []
