"""Padding-free batches: rows flattened into one sequence give the same logits and loss as the
same rows padded (SDPA and eager), rows never attend across their boundaries, and a training
run flattens its batches with the loss still on the completion only."""

from __future__ import annotations

import pytest

from loradeck.engine import config as cfg
from loradeck.engine.runs.events import EventWriter, read_events
from loradeck.engine.runs.store import RunStore

ROWS = [  # three rows of different lengths, so the padded batch has padding
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nParis.",
    "<|im_start|>user\n서울은 어느 나라의 수도인가요?<|im_end|>\n<|im_start|>assistant\n"
    "대한민국의 수도입니다. It has been the capital for centuries.",
    "short row",
]


def demo(**sets) -> cfg.Config:
    return cfg.from_overrides([f"{k}={v}" for k, v in sets.items()], base=cfg.demo_config())


def _model_and_rows(attn: str):
    import torch

    from loradeck.engine.models import loading as models

    config = demo(**{"model.attn_implementation": attn})
    tok = models.load_tokenizer(config.model)
    model = models.load_model(config.model, device="cpu").eval()
    assert model.config._attn_implementation == attn
    torch.manual_seed(0)
    with torch.no_grad():  # demo:tiny starts near uniform; sharper weights make a real test
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    examples = [{"input_ids": ids} for ids in tok(ROWS)["input_ids"]]
    return model, tok, examples


def _forward(model, batch: dict):
    import torch

    keep = ("input_ids", "attention_mask", "position_ids", "labels")
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k in keep}, use_cache=False)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_batch_matches_the_padded_batch(demo_model, attn):
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, tok, examples = _model_and_rows(attn)
    lengths = [len(e["input_ids"]) for e in examples]
    assert len(set(lengths)) == len(lengths)

    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(examples)
    flat = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id,
                                           padding_free=True)(examples)
    # what TRL's collator hands the model in padding-free mode: one row, positions restarting
    # at 0 on each example, and no attention mask
    assert "attention_mask" not in flat and "attention_mask" in padded
    assert flat["input_ids"].shape == (1, sum(lengths))
    assert flat["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]

    out_pad, out_flat = _forward(model, padded), _forward(model, flat)
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    for row, n in enumerate(lengths):
        a = out_pad.logits[row, :n]
        b = out_flat.logits[0, starts[row]:starts[row + 1]]
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (attn, row, (a - b).abs().max())
    assert out_flat.loss.item() == pytest.approx(out_pad.loss.item(), abs=1e-5)

    # the control: the same flattened rows with positions that do not restart are one long
    # sequence, so every row after the first attends to the rows before it and differs
    crossed = dict(flat, position_ids=torch.arange(sum(lengths))[None])
    out_cross = _forward(model, crossed)
    for row in (1, 2):
        a = out_pad.logits[row, :lengths[row]]
        b = out_cross.logits[0, starts[row]:starts[row + 1]]
        assert (a - b).abs().max() > 1e-2, (attn, row)
    assert abs(out_cross.loss.item() - out_pad.loss.item()) > 1e-3


def test_padding_free_applies_only_where_it_gains(demo_model):
    from loradeck.engine.train.sft_args import padding_free_applies

    assert cfg.Config().training.padding_free is True
    assert padding_free_applies(demo())
    assert not padding_free_applies(demo(**{"training.padding_free": "false"}))
    assert not padding_free_applies(demo(**{"training.packing": "true"}))
    assert not padding_free_applies(demo(**{"training.batch_size": 1}))
    assert not padding_free_applies(demo(**{"model.trust_remote_code": "true"}))


class _Capture:
    """A TrainerCallback that records what the model gets in its first training forward."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Capture(TrainerCallback):
            def __init__(self) -> None:
                self.batches: list[dict] = []

            def hook(self, module, args, kwargs):
                if module.training and not self.batches:
                    self.batches.append({k: v.detach().clone() for k, v in kwargs.items()
                                         if hasattr(v, "detach")})

            def on_train_begin(self, args, state, control, model=None, **kwargs):
                model.register_forward_pre_hook(self.hook, with_kwargs=True)
                return control

        return Capture()


def _train(padding_free: bool, tmp_name: str):
    from loradeck.engine.train.trainer import JobContext, train_once

    config = demo(**{"training.max_steps": 1, "training.padding_free": str(padding_free).lower(),
                     "training.logging_steps": 1, "dataset.eval_fraction": 0,
                     "training.gradient_checkpointing": "false"})
    run = RunStore().create(config, name=tmp_name)
    ctx = JobContext(run=run, config=config, events=EventWriter(run.events_path))
    capture = _Capture()
    outcome = train_once(ctx, callbacks=(capture,))
    events = read_events(run.events_path)
    info = next(ev for ev in events if ev["type"] == "info")
    first = next(ev for ev in events if ev["type"] == "metrics" and "loss" in ev)
    return config, capture.batches[0], info, first["loss"], outcome


def test_a_run_trains_on_padding_free_batches_with_loss_on_the_completion(demo_model):
    import torch

    from loradeck.engine.data import prep as dataset_prep
    from loradeck.engine.models import loading as models

    config, batch, info, loss_flat, outcome = _train(True, "flat")
    assert not outcome.stopped and info["padding_free"] is True
    assert "attention_mask" not in batch
    ids, labels, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    assert batch["input_ids"].shape[0] == 1
    starts = (pos == 0).nonzero().flatten().tolist()
    assert len(starts) == config.training.batch_size
    bounds = list(zip(starts, starts[1:] + [len(ids)], strict=True))

    tok = models.load_tokenizer(config.model)
    prepared = dataset_prep.prepare(config, tok)
    rows = [(r["assistant_masks"].index(1), r["input_ids"]) for r in prepared.train]
    for a, b in bounds:
        seg = ids[a:b].tolist()
        n = next(p for p, full in rows if full == seg)  # each segment is one whole row
        assert (labels[a:a + n] == -100).all(), "prompt tokens must get no loss"
        assert torch.equal(labels[a + n:b], ids[a + n:b]), "completion tokens carry the loss"

    # the same first step, padded: the same loss (rows did not see each other)
    _, padded_batch, info_pad, loss_pad, _ = _train(False, "padded")
    assert info_pad["padding_free"] is False and "attention_mask" in padded_batch
    assert padded_batch["input_ids"].shape[0] == config.training.batch_size
    assert loss_flat == pytest.approx(loss_pad, abs=2e-4)
