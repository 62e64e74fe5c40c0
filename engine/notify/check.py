"""Refuse, before launch, a notification URL that apprise cannot use (or one masked in a
run's saved config, copied back by hand)."""

from __future__ import annotations

from loradeck.engine.config import MASKED_URL, Config
from loradeck.engine.errors import LoradeckError


def check(config: Config) -> None:
    """One line naming the first bad ``notify.urls`` entry; nothing when all are usable."""
    if not config.notify.urls:
        return
    from loradeck.engine.notify.send import quiet_apprise

    apprise = quiet_apprise()
    for n, url in enumerate(config.notify.urls, start=1):
        scheme = url.partition("://")[0]
        if url.endswith(MASKED_URL):
            raise LoradeckError(f"notify.urls: entry {n} ({url}) is a masked URL from a run's "
                                "saved config", kind="config",
                                hint="write the whole URL (with its token) in your own config")
        if apprise.Apprise.instantiate(url) is None:
            raise LoradeckError(f"notify.urls: entry {n} ({scheme}://) is not a URL apprise "
                                "can send to", kind="config",
                                hint="see apprise's list of services for the URL form, e.g. "
                                     "ntfy://my-topic or json://host/path")
