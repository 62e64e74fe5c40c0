"""The trainer of each ``training.method``, through TRL: SFTTrainer, DPOTrainer, KTOTrainer and
ORPOTrainer (under ``trl.experimental`` in TRL 1.16) and GRPOTrainer, each with its config
built from the same training section plus the method's own (``preference``, ``grpo``). With a
PEFT adapter the reference model is the base with the adapter off: no second copy of the
weights. Heavy: the job imports it."""

from __future__ import annotations

import os
from typing import Any

from loradeck.engine.config import Config
from loradeck.engine.runs.store import Run
from loradeck.engine.train.sft_args import common_args, sft_config

METHOD_FIGURES = {
    "dpo": ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"),
    "orpo": ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected",
             "nll_loss", "log_odds_ratio"),
    "kto": ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins"),
    "grpo": ("reward", "reward_std", "kl", "completions/mean_length"),
}
"""The figures of each method that its events carry (GRPO's rewards/NAME/mean too)."""


def method_figures(method: str, logs: dict[str, Any]) -> dict[str, float]:
    """The method's figures in a Trainer log, rounded (eval_ ones too, without the prefix)."""
    wanted = METHOD_FIGURES.get(method, ())
    out: dict[str, float] = {}
    for key, value in logs.items():
        name = key.removeprefix("eval_")
        keep = name in wanted or (method == "grpo" and name.startswith("rewards/")
                                  and name.endswith(("/mean", "/std")))
        if keep and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = round(float(value), 6)
    return out


def method_config(config: Config, run: Run, *, device: str, dtype: Any, has_eval: bool):
    """The TRL config of the run's method."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    method, t, p, g = config.training.method, config.training, config.preference, config.grpo
    if method == "sft":
        return sft_config(config, run, device=device, dtype=dtype, has_eval=has_eval)
    common = common_args(config, run, device=device, dtype=dtype, has_eval=has_eval)
    if method == "dpo":
        from trl import DPOConfig

        return DPOConfig(**common, beta=p.beta, loss_type=[str(p.loss_type)],
                         max_length=t.max_length)
    if method == "kto":
        from trl.experimental.kto import KTOConfig

        return KTOConfig(**common, beta=p.beta, max_length=t.max_length)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**common, beta=p.beta, max_length=t.max_length)
    from trl import GRPOConfig

    return GRPOConfig(**common, num_generations=g.num_generations,
                      max_completion_length=g.max_completion_length, beta=g.beta,
                      temperature=g.temperature)


def make_trainer(config: Config, *, model: Any, args: Any, train: Any, evaluation: Any,
                 tokenizer: Any, peft_config: Any, callbacks: list,
                 board: Any = None) -> Any:
    """The TRL trainer of the run's method."""
    method = config.training.method
    kw = dict(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
              processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    if method == "sft":
        from trl import SFTTrainer

        return SFTTrainer(**kw)
    if method == "dpo":
        from trl import DPOTrainer

        return DPOTrainer(**kw)
    if method == "kto":
        from trl.experimental.kto import KTOTrainer

        return KTOTrainer(**kw)
    if method == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer(**kw)
    from trl import GRPOTrainer

    from loradeck.engine.train import rewards

    return GRPOTrainer(reward_funcs=rewards.build(config.grpo.rewards, board), **kw)
