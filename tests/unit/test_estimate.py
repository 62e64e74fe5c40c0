"""The memory estimator: known model shapes, rules of thumb, monotonicity, the formula checked
against the tensors autograd really keeps, and ``loradeck estimate`` end to end."""

from __future__ import annotations

import json

import pytest

from loradeck.engine.train import estimate as est
from tests.conftest import run_cli

MISTRAL_7B = {"architectures": ["MistralForCausalLM"], "model_type": "mistral",
              "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32768,
              "tie_word_embeddings": False, "head_dim": 128}
LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
             "vocab_size": 32000, "tie_word_embeddings": False}
LLAMA3_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "vocab_size": 128256, "tie_word_embeddings": False}
QWEN2_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
             "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
             "vocab_size": 151936, "tie_word_embeddings": True}
SEVEN_B = {"mistral": MISTRAL_7B, "llama2": LLAMA2_7B}


def shape(cfg: dict) -> est.ModelShape:
    return est.shape_from_config(cfg)


# ---- shapes and parameter counts -------------------------------------------------------------

@pytest.mark.parametrize("cfg, params_b", [(MISTRAL_7B, 7.248), (LLAMA2_7B, 6.738),
                                           (LLAMA3_8B, 8.030), (QWEN2_05B, 0.494)])
def test_parameter_counts_match_the_published_sizes(cfg, params_b):
    assert shape(cfg).total_params() / 1e9 == pytest.approx(params_b, rel=0.005)


def test_shape_from_config_reads_nested_text_config_and_defaults():
    s = est.shape_from_config({"model_type": "mistral3", "text_config": dict(MISTRAL_7B)})
    assert (s.hidden_size, s.num_layers, s.num_kv_heads, s.vocab_size) == (4096, 32, 8, 32768)
    gpt2 = est.shape_from_config({"model_type": "gpt2", "n_embd": 768, "n_layer": 12,
                                  "n_head": 12, "vocab_size": 50257})
    assert gpt2.intermediate_size == 4 * 768 and gpt2.tie_embeddings and not gpt2.gated_mlp
    assert gpt2.num_kv_heads == 12
    with pytest.raises(ValueError, match="num_hidden_layers"):
        est.shape_from_config({"hidden_size": 64, "num_attention_heads": 4, "vocab_size": 10})


def test_shape_for_knows_demo_hub_names_and_says_none_when_unknown(tmp_path):
    assert est.shape_for("demo:tiny").hidden_size == 128
    assert est.shape_for("mistralai/Mistral-7B-v0.3").vocab_size == 32768
    assert est.shape_for("meta-llama/Meta-Llama-3-8B-Instruct").vocab_size == 128256
    assert est.shape_for("nobody/no-such-model-anywhere") is None
    local = tmp_path / "my-model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps(QWEN2_05B))
    assert est.shape_for(str(local)) == shape(QWEN2_05B)


@pytest.mark.parametrize("cfg, targets, r, trainable", [
    (LLAMA2_7B, "all-linear", 16, 39_976_960),   # the counts PEFT prints for these models
    (MISTRAL_7B, "all-linear", 16, 41_943_040),
    (LLAMA2_7B, ["q_proj", "v_proj"], 8, 4_194_304),
])
def test_lora_trainable_parameters_match_peft(cfg, targets, r, trainable):
    s = est.Settings(lora_r=r, target_modules=targets if isinstance(targets, str)
                     else tuple(targets))
    assert est.estimate(shape(cfg), s).trainable_params == trainable


def test_unknown_target_modules_are_reported_not_counted():
    e = est.estimate(shape(LLAMA2_7B), est.Settings(target_modules=("q_proj", "c_attn_x")))
    assert e.trainable_params == 32 * 16 * (4096 + 4096)
    assert any("c_attn_x" in n for n in e.notes)


# ---- rules of thumb --------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(SEVEN_B))
@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("length", [1024, 2048])
def test_7b_qlora_with_checkpointing_fits_a_24gb_card(model, batch, length):
    s = est.Settings(quantization="4bit", lora_r=16, batch_size=batch, max_length=length,
                     gradient_checkpointing=True)
    e = est.estimate(shape(SEVEN_B[model]), s)
    assert 3.5 < e.weights_gb < 5.0  # 4-bit 7B: ~0.52 byte a weight, fp32 embeddings
    assert 6.0 < e.total_gb < 24.0
    assert e.fits(24.0).fits


@pytest.mark.parametrize("model", sorted(SEVEN_B))
def test_7b_16bit_lora_needs_about_14gb_for_weights_and_does_not_fit_16gb(model):
    s = est.Settings(quantization="none", compute_dtype="bf16", batch_size=4, max_length=1024)
    e = est.estimate(shape(SEVEN_B[model]), s)
    assert 13.0 < e.weights_gb < 16.0
    verdict = e.fits(16.0)
    assert not verdict.fits and e.total_gb > 16.0
    four_bit = [sg for sg in verdict.suggestions if sg.changes == {"model.quantization": "4bit"}]
    assert four_bit and four_bit[0].fits and four_bit[0].total_gb < 16.0
    assert four_bit[0].set_args() == ["model.quantization=4bit"]


def test_without_checkpointing_7b_activations_dominate():
    s = est.Settings(gradient_checkpointing=False, batch_size=4, max_length=1024)
    e = est.estimate(shape(MISTRAL_7B), s)
    assert e.activations_gb > 20 and e.activations_gb > 4 * e.weights_gb
    with_ckpt = est.estimate(shape(MISTRAL_7B), s.replace(gradient_checkpointing=True))
    assert with_ckpt.activations_gb < e.activations_gb / 5


def test_llama3_large_vocabulary_costs_memory():
    s = est.Settings(batch_size=4, max_length=1024)
    l3, mistral = est.estimate(shape(LLAMA3_8B), s), est.estimate(shape(MISTRAL_7B), s)
    assert l3.weights_gb > mistral.weights_gb + 2.5  # 128k x 4096 embeddings and head, fp32
    full = est.estimate(shape(LLAMA3_8B), s.replace(lm_head="full"))
    assert 5.5 < full.logits_gb < 7.0  # 4096 tokens x 128256 x ~12 bytes
    assert l3.logits_gb < 1.0  # the fused LM head never holds the full logits


def test_full_logits_dominate_a_small_model():
    s = est.Settings(quantization="none", batch_size=4, max_length=1024, lm_head="full")
    e = est.estimate(shape(QWEN2_05B), s)
    parts = {k: getattr(e, k) for k, _ in est.Estimate.PARTS}
    assert max(parts, key=parts.get) == "logits_gb"
    assert e.weights_gb == pytest.approx(0.494e9 * 2 / 1e9, abs=0.02)  # tied: counted once


@pytest.mark.parametrize("cfg", [MISTRAL_7B, LLAMA3_8B, QWEN2_05B, "demo"])
def test_monotonic(cfg):
    sh = est.shape_for("demo:tiny") if cfg == "demo" else shape(cfg)
    base = est.Settings(batch_size=2, max_length=512)
    totals = [est.estimate(sh, base.replace(batch_size=b)).total_gb for b in (1, 2, 4, 8)]
    assert totals == sorted(totals) and totals[0] < totals[-1]
    acts = [est.estimate(sh, base.replace(max_length=n)).activations_gb
            for n in (256, 512, 1024, 2048)]
    assert acts == sorted(acts) and acts[0] < acts[-1]
    on = est.estimate(sh, base.replace(batch_size=8, max_length=2048))
    off = est.estimate(sh, base.replace(batch_size=8, max_length=2048,
                                        gradient_checkpointing=False))
    assert on.activations_gb < off.activations_gb
    weights = [est.estimate(sh, base.replace(quantization=q)).weights_gb
               for q in ("4bit", "8bit", "none")]
    assert weights == sorted(weights)


def test_suggestions_keep_the_effective_batch_and_each_total_is_its_own():
    sh = shape(MISTRAL_7B)
    s = est.Settings(quantization="none", batch_size=8, grad_accum=2, max_length=2048,
                     gradient_checkpointing=False)
    verdict = est.estimate(sh, s).fits(24.0)
    assert not verdict.fits and verdict.message.startswith("does not fit")
    assert any(sg.fits for sg in verdict.suggestions)
    for sg in verdict.suggestions:
        keys = {k.split(".")[1]: v for k, v in sg.changes.items()}
        assert sg.total_gb == est.estimate(sh, s.replace(**keys)).total_gb
        assert sg.fits == (sg.total_gb <= 24.0)
        if "batch_size" in keys:
            assert keys["batch_size"] * keys["grad_accum"] >= 16
    fitting = [sg for sg in verdict.suggestions if sg.fits]
    assert verdict.suggestions[: len(fitting)] == fitting  # the fitting ones first


def test_a_config_that_fits_has_no_suggestions():
    v = est.estimate(est.shape_for("demo:tiny"), est.Settings()).fits(8.0)
    assert v.fits and v.suggestions == [] and v.spare_gb > 6


# ---- the formula against what autograd keeps -------------------------------------------------

def _saved_bytes_per_token(cfg: dict, layers: int, s: est.Settings, targets) -> float:
    """Bytes of the tensors autograd saves for backward (parameters excluded), per token."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**{**cfg, "num_hidden_layers": layers, "attn_implementation": "sdpa"})
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=s.lora_r, lora_alpha=16,
                                             lora_dropout=s.lora_dropout,
                                             target_modules=targets))
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    ids = torch.randint(0, cfg["vocab_size"], (s.batch_size, s.max_length))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(input_ids=ids)
    return sum(seen.values()) / s.tokens


@pytest.mark.parametrize("dropout, targets", [(0.05, "all-linear"), (0.0, ["q_proj", "v_proj"])])
def test_layer_formula_matches_the_tensors_autograd_keeps(dropout, targets):
    """demo:tiny's architecture in bf16 autocast with LoRA, as the trainer runs it unquantized."""
    from loradeck.engine.models import demo

    cfg = dict(demo.ARCH, vocab_size=demo.VOCAB_SIZE)
    built = est.shape_from_config(cfg)
    # the layers match demo:tiny's (its vocabulary is whatever the built tokenizer learned)
    assert built.layer_linear_params() == est.shape_for("demo:tiny").layer_linear_params()
    s = est.Settings(quantization="none", compute_dtype="bf16", lora_r=8, lora_dropout=dropout,
                     batch_size=2, max_length=64,
                     target_modules=targets if isinstance(targets, str) else tuple(targets))
    per_layer = (_saved_bytes_per_token(cfg, 4, s, targets)
                 - _saved_bytes_per_token(cfg, 2, s, targets)) / 2
    expected = est.layer_activation_bytes(built, s, mask_bytes=4)  # CPU masks are fp32 here
    print(f"saved per token per layer: measured {per_layer:.0f} B, formula {expected:.0f} B")
    assert per_layer == pytest.approx(expected, rel=0.05)


# ---- the CLI ---------------------------------------------------------------------------------

def _write(tmp_path, text: str):
    p = tmp_path / "run.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_cli_estimate_demo_config_fits(tmp_path):
    init = run_cli(["init", str(tmp_path / "demo.yaml"), "--demo"])
    assert init.returncode == 0, init.stderr
    r = run_cli(["estimate", str(tmp_path / "demo.yaml"), "--gpu-memory", "8"])
    assert r.returncode == 0, r.stderr
    for label in ("weights", "LoRA params, grads, optimizer", "activations", "logits",
                  "CUDA context", "total (peak, per GPU)"):
        assert label in r.stdout
    assert "demo:tiny" in r.stdout
    assert "fits: ~" in r.stdout and "compared with --gpu-memory 8 GB" in r.stdout


def test_cli_estimate_without_gpu_says_how_to_compare(tmp_path):
    r = run_cli(["estimate", "demo"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert "no GPU found: compare with --gpu-memory" in r.stdout
    assert "total (peak, per GPU)" in r.stdout


def test_cli_estimate_7b_that_does_not_fit_suggests_changes(tmp_path):
    cfg = _write(tmp_path, "model:\n  name: mistralai/Mistral-7B-v0.3\n  quantization: none\n"
                           "training:\n  batch_size: 8\n  gradient_checkpointing: false\n")
    r = run_cli(["estimate", str(cfg), "--gpu-memory", "16"])
    assert r.returncode == 3, r.stdout + r.stderr
    assert "does not fit" in r.stdout and "changes that make it fit:" in r.stdout
    assert "--set model.quantization=4bit" in r.stdout
    assert "--set training.gradient_checkpointing=true" in r.stdout
    # the suggested fix really fits
    fixed = run_cli(["estimate", str(cfg), "--gpu-memory", "16", "--set",
                     "training.gradient_checkpointing=true", "--set", "model.quantization=4bit"])
    assert fixed.returncode == 0 and "fits: ~" in fixed.stdout


def test_cli_estimate_json(tmp_path):
    cfg = _write(tmp_path, "model:\n  name: demo:tiny\ntraining:\n  batch_size: 2\n")
    r = run_cli(["estimate", str(cfg), "--set", "training.max_length=512", "--gpu-memory", "0.5",
                 "--json"])
    data = json.loads(r.stdout)
    assert r.returncode == 3
    assert data["settings"]["max_length"] == 512 and data["settings"]["batch_size"] == 2
    e = data["estimate"]
    parts = ("weights_gb", "lora_gb", "activations_gb", "logits_gb", "context_gb", "overhead_gb")
    assert set(parts) | {"total_gb", "trainable_params", "total_params"} <= set(e)
    assert e["total_gb"] == pytest.approx(sum(e[k] for k in parts), abs=0.02)
    assert data["fits"] is False and data["free_gb"] == 0.5
    assert data["verdict"]["suggestions"] and data["shape"]["hidden_size"] == 128


def test_cli_estimate_unknown_model_is_one_line(tmp_path):
    cfg = _write(tmp_path, "model:\n  name: nobody/no-such-model\n")
    r = run_cli(["estimate", str(cfg), "--gpu-memory", "24"])
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "model.name" in r.stderr and "config.json" in r.stderr


def test_estimate_takes_a_loradeck_config():
    from loradeck.engine import config as cfg

    c = cfg.from_overrides(["lora.target_modules=[q_proj, v_proj]", "training.batch_size=2"],
                           base=cfg.demo_config())
    e = est.for_config(c)
    assert e is not None and e.settings.batch_size == 2
    assert e.settings.target_modules == ("q_proj", "v_proj")
    assert e.trainable_params == 2 * 16 * ((128 + 128) + (128 + 64))
    assert est.estimate(est.shape_for("demo:tiny"), c).total_gb == e.total_gb
    v100 = est.for_config(c, bf16_supported=False)
    assert v100.settings.compute_dtype == "fp16"
