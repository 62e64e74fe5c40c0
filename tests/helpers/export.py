"""Helpers of the GGUF export tests: running ``loradeck export`` and checking what it wrote,
as every export must have it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.helpers.jobs import JOB_ENV


def exported(home: Path, run_id: str, quants: list[str]):
    args = ["export", run_id]
    for q in quants:
        args += ["--quant", q]
    return run_cli(args, env={**JOB_ENV, "LORADECK_HOME": str(home)}, timeout=900)


def check_export(home: Path, run_dir: Path, result, quants: list[str]) -> dict:
    """The files, the report and the template inside each file, as every export must have
    them; returns the report."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers import AutoTokenizer

    from loradeck.engine.data import templates

    assert result.returncode == 0, result.stdout + result.stderr
    out = run_dir / "gguf"
    names = {f"{run_dir.name}-{q}.gguf" for q in quants}
    assert {p.name for p in out.glob("*.gguf")} == names
    assert not list(out.glob(".tmp-*"))  # nothing half-written is left
    report = json.loads((out / "loradeck-report.json").read_text())
    by_type = {r["type"]: r for r in report["files"]}
    assert set(by_type) == set(quants)
    for quant, row in by_type.items():
        assert row["tokenizer_ids_match"], row
        assert row["eval_loss"] is not None and row["eval_loss_merged"] is not None
        assert f"{row['file']}: " in result.stdout  # the report, in the CLI
        if quant in ("f16", "bf16"):
            assert row["greedy_match"] and row["greedy_token_agreement"] == 1.0, row
            assert abs(row["eval_loss_gap"]) < 0.01, row
    # the run's template, inside the file, renders the prompt as transformers does
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "merged")
    llm = Llama(str(out / f"{run_dir.name}-{quants[0]}.gguf"), vocab_only=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    assert template == tokenizer.chat_template
    messages = [{"role": "user", "content": "한국의 수도는 어디인가요?"}]
    formatter = Jinja2ChatFormatter(template, tokenizer.eos_token, tokenizer.bos_token or "")
    assert formatter(messages=messages).prompt == templates.Renderer(tokenizer).prompt(messages)
    eos = tokenizer.eos_token_id
    assert llm.token_eos() == eos
    llm.close()
    return report


def assert_training_codes_in_gguf(run_dir: Path, path: Path) -> None:
    """Every target layer of ``path`` (a Q4_1 export) holds the run's training codes and
    scales and the merged offsets, bit for bit; the other matrices are f16."""
    import gguf
    import torch

    from loradeck.engine.publish.gguf_tensors import _permute
    from loradeck.engine.quant import int4

    config = json.loads((run_dir / "merged" / "config.json").read_text())
    heads = {"self_attn.q_proj": config["num_attention_heads"],
             "self_attn.k_proj": config["num_key_value_heads"]}
    _, trained = load_codes(run_dir / "quant" / "int4.safetensors")
    _, merged = load_codes(run_dir / "merged" / "int4.safetensors")
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    gguf_name = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for name, t in trained.items():
        layer, part = name.split(".")[2], name.split(".", 3)[3]
        found = tensors[f"blk.{layer}.{gguf_name[part]}.weight"]
        assert found.tensor_type == gguf.GGMLQuantizationType.Q4_1
        back = int4.from_q4_1_blocks(found.data, t.shape[1])
        q, d, m = int4.unpack(t.packed), t.scales, merged[name].offsets
        if part in heads:  # llama.cpp's row order for q and k
            q, d, m = (_permute(x, heads[part]) for x in (q, d, m))
        assert torch.equal(int4.unpack(back.packed), q), name  # the training codes
        assert torch.equal(back.scales.view(torch.int16), d.view(torch.int16)), name
        assert torch.equal(back.offsets.view(torch.int16), m.view(torch.int16)), name
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    if "output.weight" in tensors:  # absent when tied: llama.cpp reads token_embd
        assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def load_codes(path: Path):
    """A QA-LoRA codes file: (group size, codes by layer)."""
    from loradeck.engine.quant import qalora

    return qalora.load_codes(path)
