"""Each library patch in loradeck.engine.patches does what it says on the installed versions,
and fails here, loudly, when the library moves the names it patches."""

from __future__ import annotations

import inspect
import socket

import psutil

from loradeck.engine.patches import cpu_fsdp, rendezvous_bind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_rendezvous_store_listens_on_its_host_only():
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous import (
        c10d_rendezvous_backend,
        static_tcp_rendezvous,
    )

    # the names the patch replaces are where it expects them
    assert static_tcp_rendezvous.TCPStore is TCPStore or \
        getattr(static_tcp_rendezvous.TCPStore, "loradeck_bound", False)
    assert hasattr(c10d_rendezvous_backend, "TCPStore")
    assert "master_listen_fd" in (TCPStore.__init__.__doc__ or "")

    plain_port, bound_port = _free_port(), _free_port()
    plain = TCPStore("127.0.0.1", plain_port, 1, True)
    assert _listening(plain_port) - {"127.0.0.1"}  # torch alone: every interface
    store = rendezvous_bind.bind_store_to_host(TCPStore)("127.0.0.1", bound_port, 1, True)
    assert _listening(bound_port) == {"127.0.0.1"}
    store.set("k", "v")
    client = TCPStore("127.0.0.1", bound_port, 1, False)
    assert client.get("k") == b"v"
    del plain, store, client

    rendezvous_bind.apply()
    rendezvous_bind.apply()  # once is enough; again changes nothing
    assert static_tcp_rendezvous.TCPStore.loradeck_bound
    assert c10d_rendezvous_backend.TCPStore.loradeck_bound


def test_cpu_fsdp_patch_wraps_the_state_it_expects():
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    assert "fsdp_plugin" in inspect.signature(AcceleratorState.__init__).parameters
    assert DistributedType.MULTI_CPU and DistributedType.FSDP
    cpu_fsdp.apply()
    patched = AcceleratorState.__init__
    cpu_fsdp.apply()
    assert AcceleratorState.__init__ is patched and patched.loradeck_cpu_fsdp


def test_llama_cpp_opens_without_extra_buffers_only_where_the_cpu_has_amx(tmp_path,
                                                                         monkeypatch):
    import llama_cpp.llama_cpp as low

    from loradeck.engine.patches import llama_cpp_amx

    assert hasattr(low.llama_model_default_params(), "use_extra_bufts")  # the field it sets
    flags = tmp_path / "cpuinfo"
    flags.write_text("processor : 0\nflags : fpu sse avx2 amx_tile amx_int8 avx512f\n")
    assert llama_cpp_amx.cpu_has_amx(flags)
    flags.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not llama_cpp_amx.cpu_has_amx(flags)
    original = low.llama_model_default_params
    with llama_cpp_amx._no_extra_buffers():
        assert low.llama_model_default_params().use_extra_bufts is False
    assert low.llama_model_default_params is original  # put back
    assert original().use_extra_bufts is True


def test_peft_runs_its_pooled_qalora_forward_on_int4_layers():
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.gptq import GPTQLoraLinear
    from peft.tuners.lora.variants import QALoraLinearVariant

    from loradeck.engine.patches import peft_qalora
    from loradeck.engine.quant import int4
    from loradeck.engine.quant.layers import Int4Linear

    assert hasattr(LoraConfig, "_register_custom_module")
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = Int4Linear(int4.quantize(torch.randn(8, 64), 32))
            self.norm = torch.nn.LayerNorm(8)  # PEFT reads the device off a parameter

        def forward(self, x):
            return self.proj(x)

    config = peft_qalora.register(LoraConfig(r=2, lora_alpha=4, target_modules=["proj"],
                                             use_qalora=True, qalora_group_size=32))
    model = get_peft_model(Tiny(), config)
    layer = model.base_model.model.proj
    assert isinstance(layer, GPTQLoraLinear) and peft_qalora.is_qalora_layer(layer)
    assert isinstance(layer.lora_variant["default"], QALoraLinearVariant)
    assert tuple(layer.lora_A["default"].weight.shape) == (2, 64 // 32)  # pooled input
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    x = torch.randn(3, 64)
    with torch.no_grad():
        update = model(x) - layer.get_base_layer()(x)
        # the variant's forward: the group mean, times in/group (what the fold reproduces)
        pooled = x.view(3, 2, 32).mean(-1) * peft_qalora.pooled_scale(layer, "default")
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert torch.allclose(update, pooled @ a.t() @ b.t() * layer.scaling["default"],
                              atol=1e-5)


def test_lm_eval_runs_without_its_git_and_environment_probes():
    """The names the patch swaps are where it expects them, and are put back after."""
    from lm_eval import evaluator
    from lm_eval.loggers import utils

    from loradeck.engine.patches import lm_eval_quiet

    assert evaluator.get_git_commit_hash is utils.get_git_commit_hash
    assert evaluator.add_env_info is utils.add_env_info
    source = inspect.getsource(evaluator.simple_evaluate)
    assert "get_git_commit_hash()" in source and "add_env_info(results)" in source
    with lm_eval_quiet.quiet():
        assert evaluator.get_git_commit_hash() is None
        storage: dict = {}
        evaluator.add_env_info(storage)
        assert storage == {}
    assert evaluator.add_env_info is utils.add_env_info
