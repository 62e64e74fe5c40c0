"""Tell the user a run ended (or the queue ran dry), through apprise, to every URL of the run.

What is told: the run, its phase, its final train and eval loss, its runtime and its error
line. A notification that fails is a warning event and never fails the run; no URL (they hold
tokens) is ever written to an event or a log, and apprise's own log is kept quiet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from loradeck.engine.enums import NotifyOn
from loradeck.engine.notify import url_store
from loradeck.engine.runs.progress import duration
from loradeck.engine.runs.store import Run

_PHASES = {"done": NotifyOn.DONE, "merged": NotifyOn.DONE, "pushed": NotifyOn.DONE,
           "failed": NotifyOn.FAILED, "stopped": NotifyOn.STOPPED}


@dataclass
class Notice:
    on: NotifyOn
    title: str
    body: str


def run_notice(run: Run, summary: dict[str, Any] | None = None) -> Notice | None:
    """What to tell about the run as it reads now (None while it has not ended)."""
    summary = summary or run.summary()
    on = _PHASES.get(str(summary.get("phase")))
    if on is None:
        return None
    state = run.state()
    lines = [f"run {run.id}: {summary['phase']}"]
    losses = [f"{name} {summary[key]:.4f}" for key, name in (("loss", "train loss"),
                                                               ("eval_loss", "eval loss"))
              if isinstance(summary.get(key), (int, float))]
    if summary.get("step"):
        losses.insert(0, f"step {summary['step']}"
                      + (f"/{summary['max_steps']}" if summary.get("max_steps") else ""))
    if losses:
        lines.append(", ".join(losses))
    started, ended = state.get("started"), state.get("ended")
    if isinstance(started, (int, float)) and isinstance(ended, (int, float)) and ended >= started:
        lines.append(f"runtime {duration(ended - started)}")
    if on is NotifyOn.FAILED and summary.get("error"):
        lines.append(f"error: {summary['error']}")
    if summary.get("sweep"):
        lines.append(f"sweep {summary['sweep']}")
    return Notice(on, f"loradeck: {run.id} {summary['phase']}", "\n".join(lines))


def quiet_apprise() -> Any:
    """apprise, its own log silenced: its lines name the URLs, and the URLs hold tokens."""
    import apprise

    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
    return apprise


def deliver(urls: list[str], notice: Notice) -> tuple[int, list[str]]:
    """Send the notice to each URL; returns (how many took it, the schemes that did not)."""
    apprise = quiet_apprise()
    kind = {NotifyOn.DONE: apprise.NotifyType.SUCCESS, NotifyOn.FAILED: apprise.NotifyType.FAILURE,
            NotifyOn.STOPPED: apprise.NotifyType.WARNING}.get(notice.on, apprise.NotifyType.INFO)
    sent, failed = 0, []
    for url in urls:
        scheme = url.partition("://")[0]
        try:
            one = apprise.Apprise()
            ok = one.add(url) and bool(one.notify(body=notice.body, title=notice.title,
                                                  notify_type=kind))
        except Exception:  # a notification never fails the run
            ok = False
        if ok:
            sent += 1
        else:
            failed.append(scheme)
    return sent, failed


def after_run(run: Run, events: Any) -> None:
    """Tell the run's URLs how it ended, when its ``notify.on`` asks for that; the outcome is a
    log event (a warning when a notification failed)."""
    urls = url_store.urls_of(run.id)
    if not urls:
        return
    try:
        wanted = set(run.config().notify.on)
        notice = run_notice(run)
    except Exception as exc:  # noqa: BLE001 - never fail the run for a notification
        events.log(f"no notification sent: {type(exc).__name__}", level="warning")
        return
    if notice is None or notice.on not in wanted:
        return
    report(events, notice, *deliver(urls, notice), len(urls))


def report(events: Any, notice: Notice, sent: int, failed: list[str], total: int) -> None:
    if failed:
        events.log(f"notification ({notice.on}) not delivered to {', '.join(failed)}:// "
                   f"({sent} of {total} took it); check notify.urls", level="warning")
    else:
        events.log(f"notification ({notice.on}) sent to {total} service(s)")


def queue_empty(runs: list[Run]) -> str:
    """Tell every URL of these runs (once each, when their ``notify.on`` has queue_empty) that
    the queue is empty, with how each ended; returns a line for the runner's log (no URL)."""
    urls: list[str] = []
    for run in runs:
        try:
            wanted = NotifyOn.QUEUE_EMPTY in run.config().notify.on
        except Exception:  # noqa: BLE001 - an unreadable run tells no one
            continue
        urls += [u for u in url_store.urls_of(run.id) if wanted and u not in urls]
    if not urls:
        return "queue empty: no run asks to be told"
    lines = [f"{run.id}: {run.summary().get('phase')}" for run in runs]
    notice = Notice(NotifyOn.QUEUE_EMPTY, f"loradeck: the queue is empty ({len(runs)} run(s) "
                                          "ended)", "\n".join(lines))
    sent, failed = deliver(urls, notice)
    if failed:
        return (f"queue empty: notification not delivered to {', '.join(failed)}:// "
                f"({sent} of {len(urls)} took it)")
    return f"queue empty: notification sent to {sent} service(s)"
