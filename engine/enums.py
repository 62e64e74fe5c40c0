"""Every choice list of loradeck, once: the config's allowed values, the CLI's choices and help,
the app's selects and the engine's checks all come from these Enums.

Light module: the standard library only.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal


class Quantization(StrEnum):
    """How the base model's weights are held while training (and chatting); auto is 4bit on a
    CUDA GPU and none on a CPU (see engine/models/quantization)."""

    AUTO = "auto"
    NONE = "none"
    INT8 = "8bit"
    NF4 = "4bit"


class DatasetFormat(StrEnum):
    """The shape of a dataset's rows; auto detects it from the columns."""

    AUTO = "auto"
    INSTRUCTION = "instruction"
    MESSAGES = "messages"
    PROMPT_COMPLETION = "prompt-completion"
    TEXT = "text"


class Template(StrEnum):
    """How rows become text: the tokenizer's own chat template, or a named one."""

    AUTO = "auto"
    CHATML = "chatml"
    MISTRAL = "mistral"
    ALPACA = "alpaca"


class DataRole(StrEnum):
    """What a dataset column holds (``dataset.columns`` maps these to column names)."""

    INSTRUCTION = "instruction"
    CONTEXT = "context"
    RESPONSE = "response"
    MESSAGES = "messages"
    PROMPT = "prompt"
    COMPLETION = "completion"
    TEXT = "text"
    SYSTEM = "system"
    TOOLS = "tools"


class GGUFType(StrEnum):
    """The GGUF file types ``loradeck export`` writes."""

    F16 = "f16"
    BF16 = "bf16"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"
    Q4_1 = "q4_1"
    Q4_K_M = "q4_k_m"
    Q5_K_M = "q5_k_m"
    Q6_K = "q6_k"


def values(enum: type[StrEnum]) -> tuple[str, ...]:
    """The members' values, in order."""
    return tuple(member.value for member in enum)


def literal(enum: type[StrEnum]) -> Any:
    """A ``Literal`` of the members' values, for a config field (values stay plain text in
    YAML and JSON)."""
    return Literal[values(enum)]  # type: ignore[valid-type]


class FinishReason(StrEnum):
    """Why a chat reply ended."""

    STOP = "stop"            # the model's end of turn
    LENGTH = "length"        # max new tokens reached
    CANCELLED = "cancelled"  # the person stopped it


class EvalMetric(StrEnum):
    """The scores ``loradeck eval`` reports, and what ``--metric`` picks the best checkpoint
    by (loss: the lowest; judge: the highest win rate against the base; the rest: highest)."""

    CHRF = "chrf"
    BLEU = "bleu"
    ROUGE_L = "rouge_l"
    EXACT = "exact"
    LOSS = "loss"
    JUDGE = "judge"


class JudgeVerdict(StrEnum):
    """A judge's verdict on one pair of answers; anything else it says is INVALID."""

    A = "A"
    B = "B"
    TIE = "tie"
    INVALID = "invalid"


class EvalStage(StrEnum):
    """What an ``eval`` event says: work at a stage (done of total), or the end."""

    ANSWER = "answer"
    JUDGE = "judge"
    TASKS = "tasks"
    DONE = "done"


class TrainingMethod(StrEnum):
    """How the adapter learns: from answers (sft), from preferred and rejected answers (dpo,
    orpo), from answers labelled good or bad (kto), or from rewards on its own answers (grpo)."""

    SFT = "sft"
    DPO = "dpo"
    KTO = "kto"
    ORPO = "orpo"
    GRPO = "grpo"


class PreferenceLoss(StrEnum):
    """DPO's loss (TRL's ``DPOConfig.loss_type``): sigmoid is DPO's own, ipo and hinge are its
    common variants, apo_zero and apo_down anchor the chosen answers."""

    SIGMOID = "sigmoid"
    IPO = "ipo"
    HINGE = "hinge"
    ROBUST = "robust"
    BCO_PAIR = "bco_pair"
    SPPO_HARD = "sppo_hard"
    NCA_PAIR = "nca_pair"
    APO_ZERO = "apo_zero"
    APO_DOWN = "apo_down"


class NotifyOn(StrEnum):
    """What a notification is sent for (config ``notify.on``)."""

    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    QUEUE_EMPTY = "queue_empty"


class QueueState(StrEnum):
    """Where an entry of the run queue stands."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    EVALUATING = "evaluating"  # trained; queue add --eval's evaluation runs on its GPUs
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    CANCELLED = "cancelled"
