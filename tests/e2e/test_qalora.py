"""QA-LoRA end to end on demo:tiny: a group INT4 base, a pooled adapter, a merge that folds the
adapter into the codes' offsets, and a Q4_1 export that writes the training codes bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.errors import LoradeckError
from tests.conftest import run_cli
from tests.helpers.export import assert_training_codes_in_gguf, load_codes
from tests.helpers.jobs import JOB_ENV, of_type

pytestmark = [pytest.mark.timeout(900), pytest.mark.xdist_group("qalora-demo")]

QALORA = ["--set", "lora.variant=qalora", "--set", "model.quantization=none",
          "--set", "training.logging_steps=1", "--set", "training.eval_steps=1000",
          "--set", "training.save_steps=4", "--set", "training.learning_rate=0.005"]


def _train(home: Path, *sets: str, env: dict | None = None):
    r = run_cli(["train", "demo", *QALORA, *sets],
                env={**JOB_ENV, "LORADECK_HOME": str(home), **(env or {})}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r, next((home / "runs").iterdir())


def _cli(home: Path, *args: str):
    r = run_cli(list(args), env={**JOB_ENV, "LORADECK_HOME": str(home)}, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


# ---- the codes --------------------------------------------------------------------------

def test_the_codes_are_q4_1_blocks_that_gguf_py_decodes_to_the_same_weights():
    import gguf
    import numpy as np
    import torch

    from loradeck.engine.quant import int4

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(6, 128, generator=gen) * 0.05
    w[2, 7] = 1.5  # an outlier widens only its own group
    codes = int4.quantize(w, 32)
    q = int4.unpack(codes.packed)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15
    assert torch.equal(int4.unpack(int4.pack(q)), q)
    assert codes.packed.numel() == w.numel() // 2  # two codes a byte
    ours = int4.dequantize(codes.packed, codes.scales, codes.offsets, 32, torch.float32)
    theirs = gguf.quants.dequantize(int4.q4_1_blocks(codes), gguf.GGMLQuantizationType.Q4_1)
    assert np.array_equal(theirs.reshape(w.shape), ours.numpy())  # llama.cpp's x = d·q + m
    step = codes.scales.float().repeat_interleave(32, dim=1)
    assert bool(((ours - w).abs() <= step / 2 + 1e-6).all())  # each within half a step
    back = int4.from_q4_1_blocks(int4.q4_1_blocks(codes), 128)
    assert torch.equal(back.packed, codes.packed) and torch.equal(back.offsets, codes.offsets)
    coarse = int4.quantize(w, 128)
    assert coarse.scales.shape == (6, 1)
    assert float((int4.dequantize(coarse.packed, coarse.scales, coarse.offsets, 128,
                                  torch.float32) - w).abs().mean()) > float((ours - w).abs().mean())


def test_qalora_with_bitsandbytes_or_a_group_that_does_not_divide_is_refused_in_one_line(
        tmp_path):
    with pytest.raises(LoradeckError) as err:
        cfg.validate({"lora": {"variant": "qalora"}, "model": {"quantization": "4bit"}})
    assert "model.quantization: must be none with lora.variant qalora" in err.value.line()
    assert cfg.validate({"lora": {"variant": "qalora", "group_size": "64"},
                         "model": {"quantization": "none"}}).lora.group_size == 64
    with pytest.raises(LoradeckError) as err:
        cfg.validate({"lora": {"group_size": 48}})
    assert "lora.group_size" in err.value.line()

    from loradeck.engine.train import estimate, preflight

    shape = estimate.ModelShape(hidden_size=96, intermediate_size=256, num_layers=2,
                                num_heads=4, num_kv_heads=2, vocab_size=1000)
    config = cfg.validate({"lora": {"variant": "qalora", "group_size": 64},
                           "model": {"quantization": "none"}})
    with pytest.raises(LoradeckError) as err:
        preflight._groups(config, shape)
    assert err.value.where == "lora.group_size" and "96 input columns" in err.value.message

    r = run_cli(["train", "demo", "--set", "lora.variant=qalora", "--set",
                 "model.quantization=8bit"], env={"LORADECK_HOME": str(tmp_path)})
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "qalora quantizes the base itself" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_the_estimate_counts_a_qalora_base_at_four_bits_and_its_groups():
    from loradeck.engine.train import estimate

    shape = estimate.ModelShape(hidden_size=4096, intermediate_size=14336, num_layers=32,
                                num_heads=32, num_kv_heads=8, vocab_size=32768)

    def weights(**lora) -> float:
        config = cfg.validate({"model": {"quantization": "none"}, "lora": lora})
        return estimate.estimate(shape, config).weights_gb

    full, qa32, qa128 = weights(), weights(variant="qalora"), weights(variant="qalora",
                                                                       group_size=128)
    assert qa128 < qa32 < full / 2.5  # 0.625 byte a weight at group 32, against 2


# ---- a run ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qalora_run(demo_model, tmp_path_factory):
    """12 steps of qalora on demo:tiny, with an out-of-memory error injected at step 6: the job
    retries from checkpoint-4, on the run's saved codes."""
    home = tmp_path_factory.mktemp("qalora-home")
    r, run_dir = _train(home, "--set", "training.max_steps=12",
                        env={"LORADECK_INJECT_OOM_AT_STEP": "6"})
    return home, run_dir, r


def test_a_qalora_run_trains_on_int4_codes_and_resumes_on_the_same_ones(qalora_run):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from loradeck.engine.models import demo
    from loradeck.engine.quant import int4

    home, run_dir, r = qalora_run
    events = _events(run_dir)
    assert of_type(events, "done") and of_type(events, "status")[-1]["phase"] == "done"
    info = of_type(events, "info")[0]
    assert info["lora_variant"] == "qalora" and info["quantization"] == "none"
    assert info["qalora"]["layers"] == 14 and info["qalora"]["group_size"] == 32
    texts = [ev["text"] for ev in of_type(events, "log")]
    assert any("quantized 14 layers to INT4, group 32" in t for t in texts)
    assert any("14 layers on the run's INT4 codes" in t for t in texts)  # the retry's load
    resumed = [ev for ev in of_type(events, "log") if ev.get("resumed_from")]
    assert resumed and resumed[0]["resumed_from"].endswith("checkpoint-4")
    steps = [ev["step"] for ev in of_type(events, "metrics") if "loss" in ev]
    assert steps[-1] == 12 and 5 in steps

    group, codes = load_codes(run_dir / "quant" / "int4.safetensors")
    assert group == 32 and len(codes) == 14
    # the codes are the base's own weights, quantized: made again, they are the same bytes
    base = AutoModelForCausalLM.from_pretrained(demo.demo_dir(), dtype=torch.float32)
    q_proj = "model.layers.0.self_attn.q_proj"
    again = int4.quantize(base.get_submodule(q_proj).weight, 32)
    assert torch.equal(again.packed, codes[q_proj].packed)
    assert torch.equal(again.scales, codes[q_proj].scales)
    # the adapter reads pooled input: A is r x (in / group)
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    a = next(v for k, v in adapter.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    assert tuple(a.shape) == (16, 128 // 32)  # the demo config: r 16
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["use_qalora"]


@pytest.fixture(scope="module")
def merged_run(qalora_run):
    home, run_dir, _ = qalora_run
    r = _cli(home, "merge", run_dir.name)
    return home, run_dir, r


def test_merge_folds_the_adapter_into_the_offsets_and_keeps_codes_and_scales(merged_run):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from loradeck.engine.quant import int4

    home, run_dir, r = merged_run
    assert "check (INT4, offsets folded): fine: the merged model answers as base + adapter does" in r.stdout
    merge = next(ev["merge"] for ev in of_type(_events(run_dir), "info") if "merge" in ev)
    assert merge["int4_check"]["tokens_match"]
    assert merge["int4_check"]["max_logit_diff"] < 0.05  # fp16 rounding of the offsets
    _, trained = load_codes(run_dir / "quant" / "int4.safetensors")
    group, merged = load_codes(run_dir / "merged" / "int4.safetensors")
    assert group == 32 and sorted(merged) == sorted(trained)
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    lora = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    scaling = lora["lora_alpha"] / lora["r"]
    moved = 0
    for name, t in trained.items():
        m = merged[name]
        assert torch.equal(m.packed, t.packed) and torch.equal(m.scales, t.scales)
        a = next(v for k, v in adapter.items() if k.endswith(f"{name}.lora_A.weight"))
        b = next(v for k, v in adapter.items() if k.endswith(f"{name}.lora_B.weight"))
        cols = t.shape[1]
        # PEFT's pooled forward: mean over the group, times in/group; so per column s·BA·(in/g)/g
        update = scaling * (b.float() @ a.float()) * (cols // group) / group
        want = (t.offsets.float() + update).to(torch.float16)
        assert torch.equal(m.offsets, want), name
        moved += int((m.offsets != t.offsets).sum())
    assert moved > 0
    # the 16-bit form, for transformers users, is d·q + m with the folded offsets
    plain = AutoModelForCausalLM.from_pretrained(run_dir / "merged", dtype=torch.float32)
    name = "model.layers.1.mlp.down_proj"
    m = merged[name]
    assert torch.equal(plain.get_submodule(name).weight,
                       int4.dequantize(m.packed, m.scales, m.offsets, 32, torch.float32))


def test_the_q4_1_export_writes_the_training_codes_bit_for_bit(merged_run):
    home, run_dir, _ = merged_run
    r = _cli(home, "export", run_dir.name, "--quant", "q4_1")
    assert "nothing is re-quantized" in r.stdout
    report = json.loads((run_dir / "gguf" / "loradeck-report.json").read_text())
    row = report["files"][0]
    assert row["int4_exact"] and row["tokenizer_ids_match"] and row["greedy_match"], row
    assert abs(row["eval_loss_gap"]) < 0.01, row
    assert_training_codes_in_gguf(run_dir, run_dir / "gguf" / f"{run_dir.name}-q4_1.gguf")


def test_the_chat_worker_runs_a_qalora_adapter_on_its_codes(merged_run, monkeypatch):
    from loradeck.engine.serve.client import ChatClient

    home, run_dir, _ = merged_run
    monkeypatch.setenv("LORADECK_HOME", str(home))
    messages = [{"role": "user", "content": "What is LoRA fine-tuning?"}]
    params = {"temperature": 0, "max_new_tokens": 8, "repetition_penalty": 1.0}
    replies = []
    for source in ({"model": "demo:tiny", "adapter": str(run_dir / "adapter")},
                   {"model": str(run_dir / "merged")}):
        with ChatClient() as client:
            loaded = client.start(**source)
            replies.append(client.complete(messages, params).text)
        assert loaded["adapter"] == ("adapter" in source)
    assert replies[0] == replies[1] and replies[0]  # trained model and merged model agree


def test_a_group_64_run_is_re_blocked_for_q4_1_and_says_so(demo_model, tmp_path):
    r, run_dir = _train(tmp_path, "--set", "lora.group_size=64", "--set", "training.max_steps=2")
    r = _cli(tmp_path, "export", run_dir.name, "--quant", "q4_1")
    assert "re-blocked into Q4_1's groups of 32" in r.stdout
    row = json.loads((run_dir / "gguf" / "loradeck-report.json").read_text())["files"][0]
    assert row["int4_exact"] is False and row["tokenizer_ids_match"]
