"""``loradeck eval``: the eval rows answered by each model compared, scored, judged, the best
checkpoint picked, and the result saved in the run (see the package docstring).

The run is read, never changed, apart from RUN/eval/, its events (``eval_progress`` while it
works, one ``eval`` at the end) and, for ``--checkpoints``, the best checkpoint in its state.
It holds the run's job lock, like merge, so it is the run's one job; while a training job
holds the lock it refuses, unless ``while_training`` asks it to read alongside.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loradeck.engine.enums import EvalMetric, EvalStage
from loradeck.engine.errors import LoradeckError
from loradeck.engine.evals import arena, judge, report
from loradeck.engine.evals import rows as eval_rows
from loradeck.engine.evals.answer import Contender
from loradeck.engine.evals.scores import score
from loradeck.engine.runs import lock as joblock
from loradeck.engine.runs.events import EventWriter
from loradeck.engine.runs.store import Run

Say = Callable[[str], None]


@dataclass
class EvalRequest:
    """What to evaluate and how (the CLI's flags, the Eval screen's choices)."""

    prompts: str | None = None
    rows: int | None = None
    max_new_tokens: int = 128
    base: bool = True
    adapter: bool = True
    checkpoints: bool = False
    gguf: list[str] = field(default_factory=list)
    judge: str | None = None
    judge_template: str | None = None
    metric: str = EvalMetric.CHRF
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    task_path: str | None = None
    batch_size: int = 8
    device: str = "auto"
    while_training: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRequest:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def contenders(run: Run, req: EvalRequest) -> list[Contender]:
    """The models compared, in the table's order; one line when one is missing."""
    out = [Contender("base")] if req.base else []
    has_adapter = (run.adapter_dir / "adapter_config.json").is_file()
    if req.adapter:
        if not has_adapter:
            raise LoradeckError(f"run {run.id} has no adapter yet", kind="usage",
                                where=str(run.adapter_dir),
                                hint="evaluate after training is done, or with --checkpoints")
        out.append(Contender("adapter", adapter=run.adapter_dir))
    if req.checkpoints:
        found = [cp for cp in run.checkpoints() if (cp / "adapter_config.json").is_file()]
        if not found:
            raise LoradeckError(f"run {run.id} has no complete checkpoint with an adapter",
                                kind="usage", where=str(run.checkpoints_dir),
                                hint="checkpoints are written every training.save_steps")
        out += [Contender(cp.name, adapter=cp) for cp in found]
    if req.gguf:
        from loradeck.engine.publish.gguf_export import exported_file

        out += [Contender(f"gguf:{q}", gguf=exported_file(run, q)) for q in req.gguf]
    if not out:
        raise LoradeckError("nothing to evaluate", kind="usage",
                            hint="keep the base or the adapter, or add checkpoints or GGUF files")
    return out


def load_rows(run: Run, req: EvalRequest) -> tuple[list[eval_rows.EvalRow], str]:
    rows = eval_rows.from_file(req.prompts) if req.prompts else \
        eval_rows.held_out(run.dir, run.id)
    source = str(Path(req.prompts).expanduser()) if req.prompts else "held-out eval rows"
    return (rows[: req.rows] if req.rows else rows), source


def check(run: Run, req: EvalRequest) -> None:
    """Everything that can be refused before a model loads."""
    if req.metric not in tuple(EvalMetric):
        raise LoradeckError(f"unknown metric {req.metric!r}", kind="usage", where="--metric",
                            hint=f"use one of {', '.join(EvalMetric)}")
    if req.metric == EvalMetric.JUDGE and not req.judge:
        raise LoradeckError("--metric judge needs a judge", kind="usage", where="--metric",
                            hint="add --judge URL|RUN|MODEL")
    contenders(run, req)
    load_rows(run, req)
    if req.judge and not req.adapter:
        raise LoradeckError("the judge compares the adapter with the base", kind="usage",
                            where="--judge", hint="keep the adapter in the comparison")
    if req.judge_template:
        judge.load_template(req.judge_template)
    if req.tasks:
        from loradeck.engine.evals import tasks

        tasks.check_tasks(req.tasks, req.task_path)
    if run.alive() and not joblock.held_here(run.dir) and not req.while_training:
        raise LoradeckError(f"run {run.id} has a job running (pid "
                            f"{joblock.holder_pid(run.dir)})", kind="usage",
                            hint="evaluate when it ends, or read alongside it with "
                                 "--while-training (it shares the GPU)")


class EvalProgress:
    """``eval_progress`` events, at most one a second per stage and model (and the last)."""

    def __init__(self, events: EventWriter) -> None:
        self.events, self.last = events, 0.0

    def __call__(self, stage: str, model: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 1.0:
            return
        self.last = now
        self.events.emit("eval", stage=stage, model=model, done=done, total=total)


def evaluate(run: Run, req: EvalRequest, *, events: EventWriter | None = None,
             say: Say | None = None) -> tuple[report.EvalResult, Path]:
    """Do the evaluation; returns the result and the path of its JSON file."""
    check(run, req)
    if req.while_training and run.alive():
        return _evaluate(run, req, events, say)
    with joblock.holding(run.dir, run.id):
        return _evaluate(run, req, events, say)


def _evaluate(run: Run, req: EvalRequest, events: EventWriter | None, say: Say | None
              ) -> tuple[report.EvalResult, Path]:
    events = events or EventWriter(run.events_path)
    tell = say or (lambda _line: None)
    progress = EvalProgress(events)
    rows, source = load_rows(run, req)
    models = contenders(run, req)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    events.emit("log", level="info", stage="eval",
                text=f"evaluating {', '.join(m.name for m in models)} on {len(rows)} rows "
                     f"({source})")
    result = report.EvalResult(run=run.id, time=stamp, source=source,
                               rows=[r.to_dict() for r in rows],
                               max_new_tokens=req.max_new_tokens, metric=req.metric)
    answers: dict[str, list] = {}
    losses: dict[str, float | None] = {}
    hf = [m for m in models if not m.is_gguf]
    if hf:
        from loradeck.engine.evals.answer import TransformersModels

        loaded = TransformersModels(run, device=req.device, say=tell)
        renderer = loaded.renderer
        try:
            for m in hf:
                tell(f"{m.name}: answering {len(rows)} rows")
                answers[m.name] = loaded.answer(
                    m, rows, req.max_new_tokens, req.batch_size,
                    lambda n, name=m.name: progress("answer", name, n, len(rows)))
                losses[m.name] = loaded.reference_loss(m, rows, req.batch_size)
            tasks_out = _tasks(loaded, req, tell) if req.tasks else None
        finally:
            loaded.close()
    else:
        renderer, tasks_out = _renderer(run), None
    for m in models:
        if m.is_gguf:
            from loradeck.engine.evals.answer import GgufModel

            tell(f"{m.name}: answering {len(rows)} rows in llama.cpp")
            gguf = GgufModel(m.gguf, n_ctx=run.config().training.max_length
                             + req.max_new_tokens)
            try:
                answers[m.name] = gguf.answer(
                    [r.prompt_text(renderer) for r in rows], req.max_new_tokens,
                    lambda n, name=m.name: progress("answer", name, n, len(rows)))
            finally:
                gguf.close()
    references = [r.reference for r in rows]
    for m in models:
        scores = score(answers[m.name], references, losses.get(m.name))
        result.models.append({"name": m.name, "scores": scores})
        result.answers[m.name] = [asdict(a) for a in answers[m.name]]
    if req.judge:
        _judge(req, rows, answers, result, models, progress, tell)
    if req.checkpoints:
        result.best_checkpoint = report.best_checkpoint(result.models, req.metric)
    result.tasks = tasks_out
    result.arena = arena.summary(run.dir)
    path = report.save(run.dir, result)
    events.emit("eval", stage=EvalStage.DONE, path=str(path), rows=len(rows), source=source,
                models=result.models, best_checkpoint=result.best_checkpoint,
                judge=None if result.judge is None else
                {k: v for k, v in result.judge.items() if k != "judgements"},
                tasks=result.tasks)
    if result.best_checkpoint and joblock.held_here(run.dir):  # not while training writes it
        run.update_state(best_checkpoint=result.best_checkpoint["step"])
    return result, path


def _renderer(run: Run) -> Any:
    """The run's template, for GGUF-only evaluations (the tokenizer alone is loaded)."""
    from loradeck.engine.data import templates
    from loradeck.engine.publish.merge import _load_tokenizer

    config = run.config()
    tokenizer = _load_tokenizer(run, config.model)
    templates.install(tokenizer, config.dataset.template)
    return templates.Renderer(tokenizer, config.dataset.template, config.dataset.system_prompt)


def _judge(req: EvalRequest, rows: list, answers: dict[str, list], result: report.EvalResult,
           models: list[Contender], progress: EvalProgress, tell: Say) -> None:
    template = judge.load_template(req.judge_template)
    against = "base" if "base" in answers else None
    if against is None:
        raise LoradeckError("the judge compares the adapter with the base", kind="usage",
                            where="--judge", hint="keep the base in the comparison")
    pairs = ["adapter"] + ([m.name for m in models if m.name.startswith("checkpoint-")]
                           if req.metric == EvalMetric.JUDGE else [])
    with judge_endpoint(req.judge, tell) as endpoint:
        for name in pairs:
            tell(f"judge: {name} against {against}, {len(rows)} prompts in both orders")
            out = judge.judge_pairs(
                endpoint.ask, template, rows, [a.text for a in answers[name]],
                [a.text for a in answers[against]], judge=req.judge, tuned_name=name,
                other_name=against,
                progress=lambda n, nm=name: progress("judge", nm, n, 2 * len(rows)))
            tell(f"judge: {name}: {out.tally.line()}")
            result.scores_of(name)[EvalMetric.JUDGE] = out.tally.win_rate()
            if name == "adapter":
                result.judge = out.to_dict()


@contextmanager
def judge_endpoint(target: str, tell: Say):
    """An endpoint for the judge: a URL as is, or ``loradeck api TARGET`` on loopback."""
    if judge.is_url(target):
        yield judge.JudgeClient(target, judge.url_key())
        return
    from loradeck.engine.serve.api_child import ServedModel

    served = ServedModel()
    tell(f"judge: starting loradeck api {target} on loopback")
    try:
        info = served.start(target)
        yield judge.JudgeClient(info.url, info.key)
    finally:
        served.stop()


def _tasks(loaded: Any, req: EvalRequest, tell: Say) -> dict[str, Any]:
    from loradeck.engine.evals import tasks

    @contextmanager
    def opened(name: str):
        contender = Contender("base") if name == "base" else \
            Contender("adapter", adapter=loaded.run.adapter_dir)
        with loaded.answering(contender) as model:
            yield model, loaded.tokenizer

    names = [n for n in ("base", "adapter") if getattr(req, n)]
    return tasks.run_tasks({n: (lambda n=n: opened(n)) for n in names}, req.tasks,
                           limit=req.limit, task_path=req.task_path,
                           batch_size=req.batch_size, say=tell)
