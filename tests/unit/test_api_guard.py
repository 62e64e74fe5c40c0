"""loradeck api's guard and start lines, without a server: which requests go through, what is
printed, and the one line when the server's packages are missing."""

from __future__ import annotations

import pytest

from loradeck.engine.errors import LoradeckError
from loradeck.engine.serve import api_server
from loradeck.engine.serve.api_server import ApiGuard
from loradeck.engine.serve.target import ChatTarget


def test_the_host_and_the_key_are_checked():
    guard = ApiGuard("127.0.0.1", 8000, "sk-k")
    ok = {"Host": "127.0.0.1:8000", "Authorization": "Bearer sk-k"}
    assert guard.refusal(ok) is None
    assert guard.refusal({**ok, "Host": "localhost:8000"}) is None
    assert guard.refusal({**ok, "Host": "evil.example:8000"})[0] == 421  # DNS rebinding
    assert guard.refusal({**ok, "Host": "127.0.0.1:9000"})[0] == 421
    assert guard.refusal({"Host": "127.0.0.1:8000"})[0] == 401
    assert guard.refusal({**ok, "Authorization": "Bearer sk-other"})[0] == 401
    assert ApiGuard("127.0.0.1", 8000, None).refusal({"Host": "localhost:8000"}) is None
    keyless = ApiGuard("127.0.0.1", 8000, None)  # a page in the user's browser: refused
    assert keyless.refusal({"Host": "localhost:8000", "Origin": "https://evil.example"})[0] \
        == 403
    assert keyless.refusal({"Host": "localhost:8000", "Origin": "null"})[0] == 403
    assert keyless.refusal({"Host": "localhost:8000",
                            "Origin": "http://localhost:8000"}) is None
    anywhere = ApiGuard("0.0.0.0", 8000, "sk-k")
    assert anywhere.refusal({**ok, "Host": "10.1.2.3:8000"}) is None  # digits: never rebound
    assert anywhere.refusal({**ok, "Host": "evil.example:8000"})[0] == 421


def test_start_lines_give_the_tunnel_or_a_warning():
    private = api_server.start_lines("127.0.0.1", 8000, "my-run", None, "llama.cpp")
    assert "http://127.0.0.1:8000/v1" in private[0] and "ssh -N -L 8000:127.0.0.1:8000" in \
        private[2]
    public = api_server.start_lines("0.0.0.0", 8000, "my-run", "sk-k", "transformers")
    assert public[-1].startswith("warning: the endpoint is open to anyone")
    assert "sk-k" not in "".join(public)  # the key is never printed


def test_missing_server_packages_are_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(api_server.NEEDS, "transformers", ("no_such_module_for_loradeck",))
    with pytest.raises(LoradeckError) as info:
        api_server.backend_for(ChatTarget("demo:tiny", None, "none", "demo:tiny"),
                               say=lambda _: None)
    line = info.value.line()
    assert "pip install 'loradeck[api]'" in line and "no_such_module_for_loradeck" in line
    assert "\n" not in line
