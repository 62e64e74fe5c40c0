"""A small Hub-protocol server for offline push tests.

It speaks the part of the Hub HTTP API that the installed huggingface_hub client (2.x) uses for
``whoami``, ``create_repo``, ``update_repo_settings``, ``upload_folder`` / ``create_commit`` and
``snapshot_download`` / ``hf_hub_download``:

====================================================  =========================================
request                                               used by
====================================================  =========================================
``GET  /api/whoami-v2``                               ``whoami`` (token check)
``GET  /api/agent-harnesses``                         the client's start-up probe (empty)
``POST /api/repos/create``                            ``create_repo`` (409 when the name exists)
``PUT  /api/models/NS/NAME/settings``                 ``update_repo_settings`` (visibility)
``GET  /api/models/NS/NAME[/revision/REV]``           ``model_info`` / ``repo_info``
``GET  /api/models/NS/NAME/tree/REV[/PATH]``          ``list_repo_tree`` / ``list_repo_files``
``POST /api/validate-yaml``                           ``create_commit`` when README.md is added
``POST /api/models/NS/NAME/preupload/REV``            upload modes (``lfs`` or ``regular``)
``POST /NS/NAME.git/info/lfs/objects/batch``          LFS batch (basic transfer)
``PUT  /_lfs/OID`` and ``POST /_lfs/OID/verify``      the LFS upload and its verify step
``POST /api/models/NS/NAME/commit/REV``               the NDJSON commit
``HEAD|GET /NS/NAME/resolve/REV/PATH``                file metadata and download
====================================================  =========================================

Xet: when the ``hf_xet`` package is installed, huggingface_hub uploads through the Xet storage
protocol (a separate CAS service) instead of LFS. This server implements LFS only, so every client
process that uploads to it must run with ``HF_HUB_DISABLE_XET=1`` in its environment *before*
huggingface_hub is imported (``constants.HF_HUB_DISABLE_XET`` is read once, at import); with it,
``upload_folder`` takes the single ``create_commit`` path: preupload, LFS batch, PUT, verify,
commit. Downloads need no setting: this server sends no Xet headers, so ``hf_hub_download`` uses a
plain GET. Point a client at the server with ``HF_ENDPOINT=<server.url>`` (also read at import)
in a subprocess, or with ``endpoint=server.url`` in-process, and ``HF_HUB_OFFLINE=0``.

Behaviour worth knowing in tests:

- Every write and ``whoami`` needs ``Authorization: Bearer <TOKEN>``; a wrong token gets 401.
  Reads of public repos work without a token; private repos answer 401 (RepoNotFound) to others.
- Namespaces: the user ``USER``, its org ``ORG``, and ``OTHER_USER`` (someone else). Creating a
  repo whose name exists answers 409; creating under ``OTHER_USER`` answers 403; under an unknown
  namespace 404.
- ``fail(status, times, match=...)`` makes the next matching requests answer ``status`` (0 drops
  the connection without an answer), for retry, interruption and permission tests.
- ``requests`` records every request (method, path, query, headers, body, status) so tests can
  check ``visibility: private`` went out and that the token appears only in Authorization headers.
- Files live under the directory given to the server: ``objects/<sha256>`` holds contents;
  each repo keeps its commits as path -> object maps in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

TOKEN = "hf_loradeckTEST0tokenZ9y8x7w6v5u4t3s2r1"
USER = "tester"
ORG = "tester-org"
OTHER_USER = "someone-else"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".model", ".pkl", ".gguf",
                ".png", ".jpg", ".npy")
ZERO_SHA = "0" * 40


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Recorded:
    """One request the server saw."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Entry:
    """A file in a commit: where its content lives and how the Hub would describe it."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool
    commits: list[tuple[str, dict[str, Entry]]] = field(default_factory=list)

    @property
    def head(self) -> tuple[str, dict[str, Entry]]:
        return self.commits[-1]

    def at(self, revision: str) -> tuple[str, dict[str, Entry]] | None:
        if revision in ("main", "HEAD"):
            return self.head
        for sha, files in self.commits:
            if sha == revision:
                return sha, files
        return None


@dataclass
class Failure:
    status: int
    times: int
    match: str | None
    method: str | None
    message: str


class HubServer:
    """The server; use as a context manager or call start()/stop()."""

    def __init__(self, root: str | Path, token: str = TOKEN, user: str = USER) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.user = user
        self.orgs = [ORG]
        self.known_users = {user, OTHER_USER}
        self.repos: dict[str, Repo] = {}
        self.requests: list[Recorded] = []
        self.failures: list[Failure] = []
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ---- test controls ---------------------------------------------------------------------
    def fail(self, status: int, times: int = 1, match: str | None = None,
             method: str | None = None, message: str = "") -> None:
        """The next ``times`` requests whose path contains ``match`` answer ``status``.

        ``status`` 0 closes the connection without an answer (a dropped connection).
        """
        with self.lock:
            self.failures.append(Failure(status, times, match, method, message))

    def clear_failures(self) -> None:
        with self.lock:
            self.failures.clear()

    def add_repo(self, repo_id: str, *, private: bool = False, owner: str | None = None,
                 files: dict[str, bytes] | None = None) -> Repo:
        """Seed a repo, e.g. a name already taken by someone else."""
        with self.lock:
            repo = Repo(repo_id, owner or repo_id.split("/")[0], private)
            repo.commits.append((self._new_sha(repo_id, "init"), {}))
            self.repos[repo_id] = repo
            if files:
                entries = dict(repo.head[1])
                for path, data in files.items():
                    entries[path] = self._store(path, data)
                repo.commits.append((self._new_sha(repo_id, "seed"), entries))
            return repo

    def files(self, repo_id: str) -> dict[str, bytes]:
        """The files at the head of a repo, path -> content."""
        with self.lock:
            _, entries = self.repos[repo_id].head
            return {p: (self.objects / e.sha256).read_bytes() for p, e in entries.items()}

    def requests_matching(self, fragment: str, method: str | None = None) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if fragment in r.path
                    and (method is None or r.method == method)]

    # ---- storage ---------------------------------------------------------------------------
    def _new_sha(self, repo_id: str, salt: str) -> str:
        return hashlib.sha1(f"{repo_id}:{salt}:{time.time_ns()}".encode()).hexdigest()

    def _store(self, path: str, data: bytes) -> Entry:
        sha = hashlib.sha256(data).hexdigest()
        target = self.objects / sha
        if not target.exists():
            target.write_bytes(data)
        return Entry(sha, len(data), is_lfs(path, data), git_blob_sha1(data))

    def namespaces(self) -> set[str]:
        return {self.user, *self.orgs}


def is_lfs(path: str, data_or_sample: bytes, size: int | None = None) -> bool:
    """Binary files, weights and anything over 10 MB go through LFS, as on the Hub."""
    size = len(data_or_sample) if size is None else size
    return (path.endswith(LFS_SUFFIXES) or b"\0" in data_or_sample[:512]
            or size > 10 * 1024 * 1024)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


_REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "harnesses"),
    ("POST", re.compile(r"^/api/repos/create$"), "create"),
    ("PUT", re.compile(rf"^/api/models/{_REPO}/settings$"), "settings"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "info"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})$"), "lfs_put"),
    ("POST", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})/verify$"), "lfs_verify"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ---- plumbing --------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        hub = self.server_hub
        split = urlsplit(self.path)
        body = self._read_body()
        rec = Recorded(self.command, split.path, parse_qs(split.query),
                       {k.lower(): v for k, v in self.headers.items()}, body)
        with hub.lock:
            hub.requests.append(rec)
            failure = self._take_failure(split.path)
        if failure is not None:
            rec.status = failure.status
            if failure.status == 0:
                self.close_connection = True
                self.connection.close()
                return
            self._send_error(HubError(failure.status, failure.message or _reason(failure.status)))
            return
        try:
            for method, pattern, name in ROUTES:
                m = pattern.match(split.path)
                if m and method == self.command:
                    groups = {k: unquote(v) if v else v for k, v in m.groupdict().items()}
                    status, headers, payload = getattr(self, f"do_{name}")(body=body, **groups)
                    break
            else:
                raise HubError(404, f"no route for {self.command} {split.path}")
        except HubError as err:
            rec.status = err.status
            self._send_error(err)
            return
        rec.status = status
        self._send(status, headers, payload)

    def _take_failure(self, path: str) -> Failure | None:
        for f in self.server_hub.failures:
            if f.times > 0 and (f.match is None or f.match in path) and \
                    (f.method is None or f.method == self.command):
                f.times -= 1
                return f
        return None

    def _send(self, status: int, headers: dict[str, str], payload: Any) -> None:
        if isinstance(payload, bytes):
            data = payload
        elif payload is None:
            data = b""
        else:
            data = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", **headers}
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(err.status, headers, {"error": err.message})

    do_GET = do_POST = do_PUT = do_HEAD = _handle

    # ---- auth ------------------------------------------------------------------------------
    def _auth(self, required: bool) -> str | None:
        """The user name for a valid token, None for no token; 401 for a wrong one."""
        header = self.headers.get("Authorization")
        if header is None:
            if required:
                raise HubError(401, "Invalid credentials in Authorization header")
            return None
        if header != f"Bearer {self.server_hub.token}":
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.server_hub.user

    def _repo(self, repo_id: str, *, write: bool) -> Repo:
        hub = self.server_hub
        user = self._auth(required=write)
        repo = hub.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        mine = user is not None and repo.owner in hub.namespaces()
        if repo.private and not mine:
            raise HubError(401, "Repository not found", "RepoNotFound")
        if write and not mine:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _revision(self, repo: Repo, rev: str) -> tuple[str, dict[str, Entry]]:
        found = repo.at(rev)
        if found is None:
            raise HubError(404, f"Revision {rev} not found", "RevisionNotFound")
        return found

    # ---- endpoints -------------------------------------------------------------------------
    def do_whoami(self, body: bytes) -> tuple[int, dict, Any]:
        hub = self.server_hub
        user = self._auth(required=True)
        return 200, {}, {"type": "user", "name": user, "fullname": "Test User",
                         "orgs": [{"name": o, "type": "org"} for o in hub.orgs],
                         "auth": {"type": "access_token",
                                  "accessToken": {"displayName": "tests", "role": "write"}}}

    def do_harnesses(self, body: bytes) -> tuple[int, dict, Any]:
        return 200, {}, {"standardEnvVars": [], "harnesses": {}}

    def do_create(self, body: bytes) -> tuple[int, dict, Any]:
        hub = self.server_hub
        user = self._auth(required=True)
        data = json.loads(body or b"{}")
        if data.get("type", "model") != "model":
            raise HubError(400, "this server only holds model repos")
        namespace = data.get("organization") or user
        repo_id = f"{namespace}/{data['name']}"
        with hub.lock:
            if repo_id in hub.repos:
                owner = hub.repos[repo_id].owner
                text = ("You already created this model repo" if owner in hub.namespaces()
                        else "Repository name taken")
                raise HubError(409, text)
            if namespace not in hub.namespaces():
                if namespace in hub.known_users:
                    raise HubError(403, f"You don't have the rights to create a model under the "
                                        f"namespace \"{namespace}\"")
                raise HubError(404, f"Namespace {namespace} not found")
            hub.add_repo(repo_id, private=data.get("visibility") == "private", owner=namespace)
        return 200, {}, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id}

    def do_settings(self, body: bytes, repo: str) -> tuple[int, dict, Any]:
        r = self._repo(repo, write=True)
        data = json.loads(body or b"{}")
        if "visibility" in data:
            r.private = data["visibility"] == "private"
        return 200, {}, {}

    def do_info(self, body: bytes, repo: str, rev: str | None = None) -> tuple[int, dict, Any]:
        r = self._repo(repo, write=False)
        sha, files = self._revision(r, rev or "main")
        return 200, {}, {"id": repo, "author": r.owner, "sha": sha, "private": r.private,
                         "lastModified": "2024-01-01T00:00:00.000Z", "tags": [],
                         "siblings": [{"rfilename": p} for p in sorted(files)]}

    def do_tree(self, body: bytes, repo: str, rev: str, path: str | None = None
                ) -> tuple[int, dict, Any]:
        r = self._repo(repo, write=False)
        _, files = self._revision(r, rev)
        prefix = (path.strip("/") + "/") if path else ""
        recursive = parse_qs(urlsplit(self.path).query).get("recursive", ["False"])[0]
        recursive = recursive.lower() in ("true", "1")
        out, folders = [], set()
        for p, e in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/", 1)[0])
                continue
            item = {"type": "file", "path": p, "size": e.size, "oid": e.git_oid}
            if e.lfs:
                item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": 134}
            out.append(item)
        out += [{"type": "directory", "path": f, "oid": ZERO_SHA} for f in sorted(folders)]
        return 200, {}, out

    def do_validate_yaml(self, body: bytes) -> tuple[int, dict, Any]:
        content = json.loads(body).get("content", "")
        m = re.match(r"^---\n(.*?)\n---", content, re.S)
        try:
            meta = yaml.safe_load(m.group(1)) if m else {}
        except yaml.YAMLError as exc:
            return 400, {}, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}
        if meta is not None and not isinstance(meta, dict):
            return 400, {}, {"errors": [{"message": "metadata must be a mapping"}],
                             "warnings": []}
        return 200, {}, {"errors": [], "warnings": []}

    def do_preupload(self, body: bytes, repo: str, rev: str) -> tuple[int, dict, Any]:
        r = self._repo(repo, write=True)
        _, files = self._revision(r, rev)
        out = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = is_lfs(f["path"], sample, f["size"])
            current = files.get(f["path"])
            oid = None
            if current is not None:
                oid = current.sha256 if lfs else current.git_oid
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False, "oid": oid})
        return 200, {}, {"files": out, "commitOid": r.head[0]}

    def do_lfs_batch(self, body: bytes, repo: str) -> tuple[int, dict, Any]:
        self._repo(repo, write=True)
        data = json.loads(body)
        objects = []
        for obj in data.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not (self.server_hub.objects / obj["oid"]).exists():
                base = self.server_hub.url
                item["actions"] = {
                    "upload": {"href": f"{base}/_lfs/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{base}/_lfs/{obj['oid']}/verify", "header": {}},
                }
            objects.append(item)
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, \
            {"transfer": "basic", "objects": objects}

    def do_lfs_put(self, body: bytes, oid: str) -> tuple[int, dict, Any]:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "content does not match its oid")
        target = self.server_hub.objects / oid
        tmp = target.with_suffix(".part")
        tmp.write_bytes(body)
        tmp.replace(target)
        return 200, {}, None

    def do_lfs_verify(self, body: bytes, oid: str) -> tuple[int, dict, Any]:
        self._auth(required=True)
        if not (self.server_hub.objects / oid).exists():
            raise HubError(404, f"object {oid} not uploaded")
        return 200, {}, {}

    def do_commit(self, body: bytes, repo: str, rev: str) -> tuple[int, dict, Any]:
        hub = self.server_hub
        r = self._repo(repo, write=True)
        if rev != "main":
            raise HubError(400, "this server commits to main only")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        with hub.lock:
            _, files = r.head
            files = dict(files)
            for item in lines[1:]:
                key, value = item["key"], item["value"]
                path = value["path"]
                if key == "file":
                    files[path] = hub._store(path, base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    obj = hub.objects / value["oid"]
                    if not obj.exists():
                        raise HubError(422, f"LFS object of {path} was never uploaded")
                    files[path] = Entry(value["oid"], value["size"], True,
                                        git_blob_sha1(obj.read_bytes()))
                elif key == "deletedFile":
                    files.pop(path, None)
                elif key == "deletedFolder":
                    for p in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                        files.pop(p)
                else:
                    raise HubError(400, f"unsupported commit operation {key}")
            sha = hub._new_sha(repo, lines[0]["value"].get("summary", ""))
            r.commits.append((sha, files))
        return 200, {}, {"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": None}

    def do_resolve(self, body: bytes, repo: str, rev: str, path: str) -> tuple[int, dict, Any]:
        r = self._repo(repo, write=False)
        sha, files = self._revision(r, rev)
        entry = files.get(path)
        if entry is None:
            raise HubError(404, f"{path} not found", "EntryNotFound")
        data = (self.server_hub.objects / entry.sha256).read_bytes()
        etag = entry.sha256 if entry.lfs else entry.git_oid
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Length": str(len(data)),
                   "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers["X-Linked-Etag"] = f'"{entry.sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        return 200, headers, data


def _reason(status: int) -> str:
    return {401: "Invalid credentials in Authorization header", 403: "Forbidden",
            404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable"}.get(status, f"error {status}")


@contextmanager
def serve(root: str | Path) -> Iterator[HubServer]:
    """A running server for the length of a ``with`` block."""
    server = HubServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_server(tmp_path: Path) -> Iterator[HubServer]:
    """A fresh server on 127.0.0.1 (random port) with its files under the test's tmp dir."""
    with serve(tmp_path / "hub") as server:
        yield server


def hub_env(hub: HubServer, token: str | None = TOKEN, **extra: str) -> dict[str, str]:
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
           "LORADECK_PUSH_BACKOFF": "0.01", **extra}
    if token is not None:
        env["HF_TOKEN"] = token
    return env
