"""Notifications through apprise: a local webhook (``json://127.0.0.1:PORT``) hears a queued
run fail, the next one finish, and the queue run dry; a plain detached run is told too; a URL
that does not answer is a warning and never fails the run; the URL's secrets never reach a run
file, a log or the queue's files; a URL apprise cannot use is refused before launch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loradeck.engine.runs.events import read_events
from tests.conftest import run_cli
from tests.helpers.jobs import JOB_ENV, of_type, wait_for
from tests.helpers.queue import SHORT, qenv, queue, wait_until_settled  # noqa: F401
from tests.helpers.webhook import webhook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SECRET, HEADER_SECRET, PASSWORD = "tok-7f3a9c", "hdr-51bd02", "pw-c0ffee"


def url(port: int) -> str:
    return f"json://tester:{PASSWORD}@127.0.0.1:{port}/hook/{SECRET}?+X-Token={HEADER_SECRET}"


def no_secret_under(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and path.parent.name != "notify":
            data = path.read_bytes()
            for secret in (SECRET, HEADER_SECRET, PASSWORD):
                assert secret.encode() not in data, f"{secret} in {path}"


def test_the_queue_tells_a_webhook_of_each_end_and_of_the_empty_queue(qenv, tmp_path):  # noqa: F811
    home = Path(qenv["LORADECK_HOME"])
    with webhook() as hook:
        notify = ["--set", f"notify.urls={url(hook.port)}"]
        assert queue(qenv, "stop").returncode == 0  # hold the queue while it is set up
        data = tmp_path / "rows.jsonl"
        data.write_text("".join(json.dumps({"instruction": f"q{i}", "response": f"a{i}"}) + "\n"
                                for i in range(20)), encoding="utf-8")
        first = queue(qenv, "add", "demo", *SHORT, *notify, "--set", f"dataset.path={data}")
        second = queue(qenv, "add", "demo", *SHORT, *notify)
        assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
        data.unlink()  # checked when queued; gone when its job reads it: it fails
        failed_id, done_id = first.stdout.split()[0], second.stdout.split()[0]
        assert queue(qenv, "start").returncode == 0
        settled = wait_until_settled(qenv)
        assert [e["state"] for e in settled["entries"]] == ["failed", "done"]
        wait_for(lambda: len(hook.received) >= 3, 60, "three notifications")

    assert {r["path"] for r in hook.received} == {f"/hook/{SECRET}"}
    assert all(r["headers"]["X-Token"] == HEADER_SECRET for r in hook.received)
    by_title = {r["body"]["title"]: r["body"] for r in hook.received}
    failed = by_title[f"loradeck: {failed_id} failed"]
    assert failed["type"] == "failure"
    assert f"run {failed_id}: failed" in failed["message"] and "error: " in failed["message"]
    assert "rows.jsonl" in failed["message"] and "runtime " in failed["message"]
    done = by_title[f"loradeck: {done_id} done"]
    assert done["type"] == "success" and "step 2/2, train loss " in done["message"]
    assert "runtime " in done["message"]
    empty = next(b for t, b in by_title.items() if t.startswith("loradeck: the queue is empty"))
    assert f"{failed_id}: failed" in empty["message"] and f"{done_id}: done" in empty["message"]
    assert len(hook.received) == 3

    # the URL's tokens are in no run file, event, log or queue file; the run's config keeps
    # its scheme; the URLs themselves are the user's alone
    no_secret_under(home)
    saved = (home / "runs" / done_id / "config.yaml").read_text()
    assert "json://***" in saved
    kept = home / "notify" / f"{done_id}.json"
    assert oct(kept.stat().st_mode & 0o777) == "0o600" and SECRET in kept.read_text()
    events = read_events(home / "runs" / done_id / "events.jsonl")
    assert any("notification (done) sent to 1 service" in e["text"]
               for e in of_type(events, "log"))
    status = run_cli(["status", done_id, "--json"], env=qenv)
    assert SECRET not in status.stdout and PASSWORD not in status.stdout


def test_a_detached_run_is_told_and_a_dead_url_is_only_a_warning(tmp_path):
    env = {**JOB_ENV, "LORADECK_HOME": str(tmp_path / "home")}
    with webhook() as hook:
        dead = f"json://127.0.0.1:1/{SECRET}"  # nothing listens there
        r = run_cli(["train", "demo", *SHORT, "--set",
                     f'notify.urls=["{url(hook.port)}", "{dead}"]', "--set", "notify.on=done"],
                    env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        run_id = r.stdout.split("run ", 1)[1].split()[0]
        events_path = tmp_path / "home" / "runs" / run_id / "events.jsonl"
        warned = wait_for(lambda: [e for e in of_type(read_events(events_path), "log")
                                   if e.get("level") == "warning" and "notification" in e["text"]],
                          60, "the notification's outcome")
    assert warned[0]["text"] == ("notification (done) not delivered to json:// (1 of 2 took it); "
                                 "check notify.urls")
    assert [b["title"] for b in hook.bodies()] == [f"loradeck: {run_id} done"]
    summary = json.loads(run_cli(["status", run_id, "--json"], env=env).stdout)
    assert summary["phase"] == "done"
    no_secret_under(tmp_path / "home")


@pytest.mark.parametrize("value, said", [
    ("[nosuchservice://x/y]", "notify.urls: entry 1 (nosuchservice://) is not a URL apprise can "
                              "send to"),
    ("[json://***]", "notify.urls: entry 1 (json://***) is a masked URL from a run's saved "
                     "config"),
    ("[hello]", "notify.urls: entry 1 is not an apprise URL such as ntfy://my-topic"),
])
def test_a_url_apprise_cannot_use_is_refused_before_launch(tmp_path, value, said):
    env = {**JOB_ENV, "LORADECK_HOME": str(tmp_path / "home")}
    r = run_cli(["train", "demo", *SHORT, "--set", f"notify.urls={value}"], env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert said in r.stderr
    assert not os.path.isdir(tmp_path / "home" / "runs") or not os.listdir(tmp_path / "home" / "runs")
