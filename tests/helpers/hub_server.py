"""A small local stand-in for the Hugging Face Hub HTTP API, for tests.

Only the standard library is used (and PyYAML, a dependency of huggingface_hub, to validate cards). Point the
Hugging Face libraries at it with::

    HF_ENDPOINT=http://127.0.0.1:<port> HF_HUB_DISABLE_XET=1 HF_TOKEN=anything

It serves enough of the Hub API for ``create_repo``, ``upload_file``/``upload_folder``/``create_commit``
(regular files inline, large or binary files through the Git LFS batch API with the ``basic`` transfer),
``push_to_hub`` of transformers and datasets, ``hf_hub_download``/``snapshot_download``,
``from_pretrained``, ``HfFileSystem`` (tree, paths-info, resolve with HEAD and Range), ``load_dataset`` and
``RepoCard.validate`` (the Hub's checks of a card's task, library, base models, datasets, tags and languages).

Repos live in memory: each has branches and tags pointing at commits, and every commit holds a full
snapshot of its files. Tokens are accepted but never checked. Xet storage is not supported.

From a shell: ``python tests/helpers/hub_server.py --port 8080``. From Python: ``url, stop = start_hub_server()``.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import gzip
import hashlib
import json
import mimetypes
import re
import sys
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_USER = "user"
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # larger files must go through LFS, like on the Hub
KIND_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
LFS_GLOBS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy "
    "*.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* "
    "*.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents* *.mds *.lz4 *.wav *.mp3 *.flac "
    "*.ogg *.jpg *.jpeg *.png *.webp *.mp4"
)
DEFAULT_GITATTRIBUTES = "".join(f"{glob} filter=lfs diff=lfs merge=lfs -text\n" for glob in LFS_GLOBS.split())
# The Hub's task ids, the values its card validation accepts for `pipeline_tag` (huggingface.js `PIPELINE_DATA`).
PIPELINE_TAG_NAMES = """
text-classification token-classification table-question-answering question-answering zero-shot-classification
translation summarization feature-extraction text-generation fill-mask sentence-similarity text-to-speech
text-to-audio automatic-speech-recognition audio-to-audio audio-classification audio-text-to-text
voice-activity-detection depth-estimation image-classification object-detection image-segmentation text-to-image
image-to-text image-to-image image-to-video unconditional-image-generation video-classification
reinforcement-learning robotics tabular-classification tabular-regression tabular-to-text table-to-text
multiple-choice text-ranking text-retrieval time-series-forecasting text-to-video image-text-to-text
image-text-to-image image-text-to-video visual-question-answering document-question-answering
zero-shot-image-classification graph-ml mask-generation zero-shot-object-detection text-to-3d image-to-3d
image-feature-extraction video-text-to-text keypoint-detection visual-document-retrieval any-to-any video-to-video
other
"""
PIPELINE_TAGS = frozenset(PIPELINE_TAG_NAMES.split())
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")


def card_metadata_errors(content: str) -> list[str]:
    """What the Hub's card validation rejects in a card's YAML metadata, for the fields checked here: the task,
    library, base models and their relation, datasets, tags and languages."""
    import yaml  # PyYAML: a dependency of huggingface_hub, the client of this route

    match = re.match(r"---\s*\n(.*?)\n---\s*(?:\n|$)", content, re.S)
    metadata = yaml.safe_load(match.group(1)) if match else None
    if metadata is None:
        return []  # no metadata: the Hub accepts the card (and warns on its page)
    if not isinstance(metadata, dict):
        return ["the metadata must be a YAML mapping"]
    errors = []
    if "pipeline_tag" in metadata and metadata["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" must be one of the Hub\'s tasks, got {metadata["pipeline_tag"]!r}')
    if "library_name" in metadata and not isinstance(metadata["library_name"], str):
        errors.append('"library_name" must be a string')
    for key in ("base_model", "datasets", "tags", "language"):
        values = metadata.get(key, [])
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not all(isinstance(value, str) and value for value in values):
            errors.append(f'"{key}" must be a string or a list of strings')
        elif key in ("base_model", "datasets") and not all(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", v) for v in values):
            errors.append(f'"{key}" must hold Hub repository ids, got {values}')
    if metadata.get("base_model_relation", "finetune") not in BASE_MODEL_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {list(BASE_MODEL_RELATIONS)}')
    return errors


class HubError(Exception):
    """An error answered to the client, with the Hub's ``X-Error-Code`` when relevant."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _now() -> str:
    """Current UTC time in the Hub's ISO format."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _new_oid() -> str:
    """A random 40-hex commit id."""
    return hashlib.sha1(uuid.uuid4().bytes).hexdigest()


def git_hash(data: bytes) -> str:
    """Git blob sha1 of ``data`` (what the Hub calls a file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Blob:
    """One file's content; ``lfs`` marks files stored through Git LFS."""

    __slots__ = ("data", "lfs", "sha256", "git_oid")

    def __init__(self, data: bytes, lfs: bool):
        self.data, self.lfs = data, lfs
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.git_oid = git_hash(self.pointer() if lfs else data)

    @property
    def size(self) -> int:
        return len(self.data)

    def pointer(self) -> bytes:
        """The Git LFS pointer file standing for this blob in git."""
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    """A commit: a full snapshot of the repo's files plus metadata."""

    oid: str
    title: str
    message: str
    date: str
    parent: Commit | None
    files: dict[str, Blob]


@dataclass
class Repo:
    """A repository with branches and tags pointing at commits."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str = field(default_factory=_now)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    branches: dict[str, Commit] = field(default_factory=dict)
    tags: dict[str, Commit] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    pr_count: int = 0

    def resolve(self, rev: str | None) -> Commit:
        """Commit for a branch, tag, full or short commit id; 404 ``RevisionNotFound`` otherwise."""
        rev = rev or "main"
        for prefix, table in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            name = rev[len(prefix) :] if rev.startswith(prefix) else rev
            if name in table:
                return table[name]
        if rev in self.commits:
            return self.commits[rev]
        if re.fullmatch(r"[0-9a-f]{7,39}", rev):
            found = [c for oid, c in self.commits.items() if oid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def add_commit(self, branch: str, title: str, message: str, files: dict[str, Blob]) -> Commit:
        """Append a commit on ``branch`` (created if missing) and return it."""
        commit = Commit(_new_oid(), title, message, _now(), self.branches.get(branch), files)
        self.commits[commit.oid] = commit
        self.branches[branch] = commit
        return commit


def lfs_globs(gitattributes: Blob | None) -> list[str]:
    """Glob patterns marked ``filter=lfs`` in a ``.gitattributes`` file (defaults when absent)."""
    text = gitattributes.data.decode(errors="replace") if gitattributes else DEFAULT_GITATTRIBUTES
    return [parts[0] for parts in map(str.split, text.splitlines()) if len(parts) > 1 and "filter=lfs" in parts[1:]]


def matches_any(path: str, globs: list[str]) -> bool:
    """Git-like glob match: patterns without ``/`` match the basename, others the whole path."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in glob else name, glob.lstrip("/")) for glob in globs)


def is_ignored(path: str, gitignore: str | None) -> bool:
    """Minimal ``.gitignore`` check (no negations)."""
    if not gitignore:
        return False
    globs = [line.strip() for line in gitignore.splitlines() if line.strip() and not line.startswith(("#", "!"))]
    in_folder = any(path.startswith(g) for g in globs if g.endswith("/"))
    return in_folder or matches_any(path, [g.rstrip("/") for g in globs])


def upload_mode(path: str, size: int, sample: bytes, globs: list[str]) -> str:
    """``lfs`` for files matching LFS globs, large or binary files; ``regular`` otherwise."""
    return "lfs" if size >= LFS_SIZE_THRESHOLD or b"\0" in sample or matches_any(path, globs) else "regular"


def tree_oid(commit: Commit, path: str) -> str:
    """A stable id for a folder at a commit, derived from its content."""
    prefix = path + "/"
    listing = "".join(f"{p} {b.git_oid}\n" for p, b in sorted(commit.files.items()) if p.startswith(prefix))
    return hashlib.sha1(listing.encode()).hexdigest()


def last_commit(commit: Commit, path: str, is_dir: bool) -> Commit:
    """Most recent commit (from ``commit`` backwards) that changed ``path``."""

    def state(c: Commit):
        if is_dir:
            return tree_oid(c, path)
        blob = c.files.get(path)
        return blob.git_oid if blob else None

    current = state(commit)
    while commit.parent is not None and state(commit.parent) == current:
        commit = commit.parent
    return commit


def entry_json(commit: Commit, path: str, expand: bool) -> dict:
    """Tree / paths-info entry for a file or folder, as the Hub returns it."""
    blob = commit.files.get(path)
    if blob is None:
        entry = {"type": "directory", "oid": tree_oid(commit, path), "size": 0, "path": path}
    else:
        entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer())}
    if expand:
        last = last_commit(commit, path, blob is None)
        entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
    return entry


def tree_paths(commit: Commit, path: str, recursive: bool) -> list[str]:
    """Folders first, then files, under ``path``; 404 ``EntryNotFound`` if it is not a folder."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    files = sorted(p for p in commit.files if p.startswith(prefix))
    if prefix and not files:
        raise HubError(404, f"{path} does not exist on the revision", "EntryNotFound")
    dirs, direct_files = set(), []
    for file_path in files:
        parts = file_path[len(prefix) :].split("/")
        if recursive:
            dirs.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
            direct_files.append(file_path)
        elif len(parts) > 1:
            dirs.add(prefix + parts[0])
        else:
            direct_files.append(file_path)
    return sorted(dirs) + direct_files


def info_json(repo: Repo, commit: Commit, blobs: bool) -> dict:
    """``/api/{type}s/{repo_id}`` payload."""
    siblings = []
    for path, blob in sorted(commit.files.items()):
        sibling = {"rfilename": path}
        if blobs:
            sibling.update(size=blob.size, blobId=blob.git_oid)
            if blob.lfs:
                sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": len(blob.pointer())}
        siblings.append(sibling)
    info = {
        "_id": repo.uid,
        "id": repo.repo_id,
        "author": repo.repo_id.split("/")[0],
        "sha": commit.oid,
        "lastModified": commit.date,
        "createdAt": repo.created_at,
        "private": repo.private,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": sum(b.size for b in commit.files.values()),
    }
    if repo.repo_type == "model":
        info["modelId"] = repo.repo_id
    return info


def apply_operation(files: dict[str, Blob], key: str, value: dict, lfs_store: dict[str, Blob]) -> None:
    """Apply one ndjson commit operation (``file``, ``lfsFile``, ``deletedFile``, ``deletedFolder``)."""
    path = value.get("path", "")
    if key == "file":
        content = value["content"]
        data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
        files[path] = Blob(data, lfs=False)
    elif key == "lfsFile":
        if value["oid"] not in lfs_store:
            raise HubError(422, f"LFS object {value['oid']} for {path} was not uploaded")
        files[path] = lfs_store[value["oid"]]
    elif key == "deletedFile":
        if files.pop(path, None) is None:
            raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
    elif key == "deletedFolder":
        doomed = [p for p in files if p.startswith(path.rstrip("/") + "/")]
        if not doomed:
            raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
        for p in doomed:
            del files[p]
    else:
        raise HubError(400, f"Unsupported commit operation: {key}")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive ``(start, end)`` of a single ``bytes=`` range; None to serve the whole file."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header or "")
    if not match or match.groups() == ("", ""):
        return None
    start, end = match.groups()
    if start == "":
        first, last = max(size - int(end), 0), size - 1
        if int(end) == 0:
            first = size
    else:
        first, last = int(start), min(int(end) if end else size - 1, size - 1)
    if first >= size or first > last:
        raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return first, last


class HubStore:
    """All repos and uploaded LFS objects, guarded by one lock."""

    def __init__(self, user: str = DEFAULT_USER):
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, Blob] = {}
        self.lock = threading.RLock()

    def full_id(self, name: str, organization: str | None) -> str:
        """``namespace/name``; repos created without namespace go to the user's namespace."""
        return f"{organization or self.user}/{name}"

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo | None:
        """Create a repo with an initial ``.gitattributes`` commit; None if it already exists."""
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                return None
            repo = Repo(repo_type, repo_id, private)
            gitattributes = Blob(DEFAULT_GITATTRIBUTES.encode(), lfs=False)
            repo.add_commit("main", "initial commit", "", {".gitattributes": gitattributes})
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def get(self, repo_type: str, repo_id: str) -> Repo:
        """The repo, or 404 ``RepoNotFound``."""
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def commit(self, repo: Repo, rev: str, lines: list[dict], create_pr: bool) -> tuple[Commit, int | None]:
        """Apply an ndjson commit payload on branch ``rev`` (or a new PR from it)."""
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        branch = rev.removeprefix("refs/heads/")
        with self.lock:
            head = repo.resolve(rev) if create_pr else repo.branches.get(branch)
            if head is None:
                raise HubError(404, f"Branch not found: {rev}", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and parent != head.oid:
                raise HubError(412, f"A commit has happened since {parent}: head is {head.oid}")
            files = dict(head.files)
            for line in lines:
                if line.get("key") != "header":
                    apply_operation(files, line.get("key"), line.get("value", {}), self.lfs)
            pr_num = None
            if create_pr:
                repo.pr_count += 1
                pr_num = repo.pr_count
                branch = f"refs/pr/{pr_num}"
                repo.branches[branch] = head
            commit = repo.add_commit(branch, header.get("summary", ""), header.get("description", ""), files)
            return commit, pr_num


class HubServer(ThreadingHTTPServer):
    """HTTP server holding a ``HubStore``; run it with ``start()`` and ``stop()``."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, store: HubStore | None = None, verbose: bool = False):
        super().__init__((host, port), HubHandler)
        self.store = store or HubStore()
        self.verbose = verbose
        self.unhandled: list[str] = []
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_hub_server(port: int = 0, verbose: bool = False) -> tuple[str, Callable[[], None]]:
    """Start a server on 127.0.0.1 (free port by default) in a thread; return ``(url, stop)``."""
    server = HubServer("127.0.0.1", port, verbose=verbose).start()
    return server.url, server.stop


_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_API = rf"/api/(?P<kind>models|datasets|spaces)/{_REPO}"
_GIT = rf"/(?:(?P<kind>datasets|spaces)/)?{_REPO}"
ROUTES = [
    (method, re.compile(f"^{pattern}$"), name)
    for method, pattern, name in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/telemetry/.*", "ok"),
        ("POST", r"/api/telemetry/.*", "ok"),
        ("GET", _API + r"/revision/(?P<rev>[^/]+)", "repo_info"),
        ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
        ("POST", _API + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", _API + r"/refs", "refs"),
        ("GET", _API + r"/commits/(?P<rev>[^/]+)", "commits"),
        ("POST", _API + r"/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", _API + r"/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", _API + r"/branch/(?P<rev>[^/]+)", "create_branch"),
        ("DELETE", _API + r"/branch/(?P<rev>[^/]+)", "delete_branch"),
        ("POST", _API + r"/tag/(?P<rev>[^/]+)", "create_tag"),
        ("DELETE", _API + r"/tag/(?P<rev>[^/]+)", "delete_tag"),
        ("PUT", _API + r"/settings", "settings"),
        ("GET", _API + r"/auth-check", "ok"),
        ("GET", _API, "repo_info"),
        ("POST", _GIT + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/__lfs__/(?P<oid>[0-9a-f]{64})", "lfs_put"),
        ("POST", r"/__lfs__/verify", "lfs_verify"),
        ("GET", _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
]


class HubHandler(BaseHTTPRequestHandler):
    """Routes requests to ``route_*`` methods; each answers through ``send_json`` or ``send_bytes``."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalHub/1.0"
    server: HubServer

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815

    # --- plumbing -------------------------------------------------------------------------------------------

    @property
    def store(self) -> HubStore:
        return self.server.store

    @property
    def base_url(self) -> str:
        return f"http://{self.headers.get('Host') or self.server.url.split('://')[1]}"

    def dispatch(self) -> None:
        """Read the body, run the route under the store lock, then write the response outside of it."""
        self.response: tuple[int, dict, bytes] | None = None
        try:
            self.body = self.read_body()
            with self.store.lock:
                self.route()
        except HubError as err:
            self.send_error_json(err)
        except Exception as err:  # reported to the client and logged
            traceback.print_exc()
            self.send_error_json(HubError(500, f"{type(err).__name__}: {err}"))
        self.write_response()

    def route(self) -> None:
        """Find the route of this request and run it; 404 if there is none."""
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        method = "GET" if self.command == "HEAD" else self.command
        for route_method, pattern, name in ROUTES:
            match = pattern.match(split.path)
            if match and route_method == method:
                args = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                return getattr(self, f"route_{name}")(**args)
        self.server.unhandled.append(f"{self.command} {self.path}")
        raise HubError(404, f"No route for {self.command} {split.path}")

    def read_body(self) -> bytes:
        """Request body (Content-Length or chunked), gunzipped when needed."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self.read_chunked()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        return body

    def read_chunked(self) -> bytes:
        """Decode a chunked request body."""
        chunks = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def json_body(self) -> dict:
        return json.loads(self.body or b"{}")

    def flag(self, name: str) -> bool:
        """Truthy query parameter (``1``/``true``)."""
        return self.query.get(name, [""])[-1].lower() in ("1", "true", "yes")

    def send_bytes(self, status: int, data: bytes, headers: dict | None = None) -> None:
        """Set the response, written by ``write_response`` once the store lock is released."""
        self.response = (status, headers or {}, data)

    def write_response(self) -> None:
        """Write the response; the body is omitted for HEAD requests."""
        status, headers, data = self.response or (500, {}, b"")
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def send_error_json(self, err: HubError) -> None:
        headers = dict(err.headers)
        if err.code:
            headers["X-Error-Code"] = err.code
        headers["X-Error-Message"] = " ".join(err.message.encode("ascii", "replace").decode().split())
        self.send_json({"error": err.message}, err.status, headers)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server signature
        if self.server.verbose:
            sys.stderr.write(f"[local-hub] {format % args}\n")

    # --- helpers --------------------------------------------------------------------------------------------

    def repo(self, kind: str | None, repo: str) -> Repo:
        return self.store.get(KIND_TO_TYPE[kind], repo)

    def repo_url(self, repo: Repo) -> str:
        return f"{self.base_url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # --- account & repos ------------------------------------------------------------------------------------

    def route_ok(self, **_) -> None:
        self.send_json({})

    def route_validate_yaml(self) -> None:
        """The Hub's card validation (`RepoCard.validate`): 400 with the reasons, as text, when the metadata is
        rejected."""
        errors = card_metadata_errors(self.json_body().get("content", ""))
        if errors:
            return self.send_bytes(400, "; ".join(errors).encode(), {"Content-Type": "text/plain"})
        self.send_json({})

    def route_whoami(self) -> None:
        user = self.store.user
        token = {"displayName": "local", "role": "write"}
        self.send_json(
            {
                "type": "user",
                "id": user,
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": token},
            }
        )

    def route_create_repo(self) -> None:
        payload = self.json_body()
        repo_type = payload.get("type") or "model"
        repo_id = self.store.full_id(payload["name"], payload.get("organization"))
        private = payload.get("private") or payload.get("visibility") == "private"
        repo = self.store.create_repo(repo_type, repo_id, bool(private))
        url = f"{self.base_url}/{URL_PREFIX[repo_type]}{repo_id}"
        if repo is None:
            return self.send_json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        self.send_json({"url": url, "name": repo_id, "id": repo.uid})

    def route_delete_repo(self) -> None:
        payload = self.json_body()
        key = (payload.get("type") or "model", self.store.full_id(payload["name"], payload.get("organization")))
        if self.store.repos.pop(key, None) is None:
            raise HubError(404, f"Repository not found: {key}", "RepoNotFound")
        self.send_json({})

    def route_settings(self, kind: str, repo: str) -> None:
        payload = self.json_body()
        target = self.repo(kind, repo)
        if "private" in payload:
            target.private = bool(payload["private"])
        self.send_json({})

    def route_repo_info(self, kind: str, repo: str, rev: str | None = None) -> None:
        target = self.repo(kind, repo)
        self.send_json(info_json(target, target.resolve(rev), blobs=self.flag("blobs")))

    def route_refs(self, kind: str, repo: str) -> None:
        target = self.repo(kind, repo)

        def ref(name: str, full: str, commit: Commit) -> dict:
            return {"name": name, "ref": full, "targetCommit": commit.oid}

        branches = [ref(n, f"refs/heads/{n}", c) for n, c in target.branches.items() if not n.startswith("refs/")]
        prs = [ref(n, n, c) for n, c in target.branches.items() if n.startswith("refs/pr/")]
        tags = [ref(n, f"refs/tags/{n}", c) for n, c in target.tags.items()]
        self.send_json({"branches": branches, "converts": [], "tags": tags, "pullRequests": prs})

    def route_commits(self, kind: str, repo: str, rev: str) -> None:
        commit: Commit | None = self.repo(kind, repo).resolve(rev)
        out = []
        while commit is not None:
            title, message, date = commit.title, commit.message, commit.date
            authors = [{"user": self.store.user, "avatar": None}]
            out.append({"id": commit.oid, "title": title, "message": message, "date": date, "authors": authors})
            commit = commit.parent
        self.send_json(out)

    def route_create_branch(self, kind: str, repo: str, rev: str) -> None:
        target = self.repo(kind, repo)
        if rev in target.branches:
            raise HubError(409, f"Branch {rev} already exists")
        target.branches[rev] = target.resolve(self.json_body().get("startingPoint") or "main")
        self.send_json({})

    def route_delete_branch(self, kind: str, repo: str, rev: str) -> None:
        target = self.repo(kind, repo)
        if rev == "main" or target.branches.pop(rev, None) is None:
            raise HubError(404 if rev != "main" else 403, f"Cannot delete branch {rev}", "RevisionNotFound")
        self.send_json({})

    def route_create_tag(self, kind: str, repo: str, rev: str) -> None:
        target = self.repo(kind, repo)
        tag = self.json_body()["tag"]
        if tag in target.tags:
            raise HubError(409, f"Tag {tag} already exists")
        target.tags[tag] = target.resolve(rev)
        self.send_json({})

    def route_delete_tag(self, kind: str, repo: str, rev: str) -> None:
        target = self.repo(kind, repo)
        if target.tags.pop(rev, None) is None:
            raise HubError(404, f"Tag {rev} not found", "RevisionNotFound")
        self.send_json({})

    # --- listing --------------------------------------------------------------------------------------------

    def route_tree(self, kind: str, repo: str, rev: str, path: str | None) -> None:
        commit = self.repo(kind, repo).resolve(rev)
        expand = self.flag("expand")
        paths = tree_paths(commit, path or "", recursive=self.flag("recursive"))
        self.send_json([entry_json(commit, p, expand) for p in paths])

    def route_paths_info(self, kind: str, repo: str, rev: str) -> None:
        commit = self.repo(kind, repo).resolve(rev)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            payload = self.json_body()
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(self.body.decode())
            paths, expand = form.get("paths", []), form.get("expand", [""])[-1].lower() in ("1", "true")
        out = []
        for path in (p.strip("/") for p in paths):
            exists = path in commit.files or any(f.startswith(path + "/") for f in commit.files)
            if path and exists:
                out.append(entry_json(commit, path, expand))
        self.send_json(out)

    # --- uploads --------------------------------------------------------------------------------------------

    def route_preupload(self, kind: str, repo: str, rev: str) -> None:
        commit = self.repo(kind, repo).resolve(rev)
        payload = self.json_body()
        globs = lfs_globs(commit.files.get(".gitattributes"))
        out = []
        for item in payload.get("files", []):
            path, sample = item["path"], base64.b64decode(item.get("sample", ""))
            mode = upload_mode(path, item.get("size", 0), sample, globs)
            existing = commit.files.get(path)
            oid = None if existing is None else existing.sha256 if mode == "lfs" else existing.git_oid
            ignored = is_ignored(path, payload.get("gitIgnore"))
            out.append({"path": path, "uploadMode": mode, "shouldIgnore": ignored, "oid": oid})
        self.send_json({"files": out, "commitOid": commit.oid})

    def route_commit(self, kind: str, repo: str, rev: str) -> None:
        target = self.repo(kind, repo)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        commit, pr_num = self.store.commit(target, rev, lines, create_pr=self.flag("create_pr"))
        pr_url = f"{self.repo_url(target)}/discussions/{pr_num}" if pr_num else None
        self.send_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.repo_url(target)}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    def route_lfs_batch(self, kind: str | None, repo: str) -> None:
        self.repo(kind, repo)
        payload = self.json_body()
        if payload.get("operation") not in (None, "upload"):
            raise HubError(400, "Only the 'upload' operation of the LFS batch API is supported")
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.store.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.base_url}/__lfs__/{obj['oid']}", "header": {}},
                    "verify": {"href": f"{self.base_url}/__lfs__/verify", "header": {}},
                }
            objects.append(entry)
        lfs_json = {"Content-Type": "application/vnd.git-lfs+json"}
        self.send_json({"transfer": "basic", "objects": objects}, headers=lfs_json)

    def route_lfs_put(self, oid: str) -> None:
        blob = Blob(self.body, lfs=True)
        if blob.sha256 != oid:
            raise HubError(400, f"sha256 mismatch: expected {oid}, got {blob.sha256}")
        self.store.lfs.setdefault(oid, blob)
        self.send_bytes(200, b"", {"ETag": f'"{hashlib.md5(self.body).hexdigest()}"'})

    def route_lfs_verify(self) -> None:
        payload = self.json_body()
        blob = self.store.lfs.get(payload.get("oid", ""))
        if blob is None or blob.size != payload.get("size", blob.size):
            raise HubError(404, f"LFS object {payload.get('oid')} not found")
        self.send_json({})

    # --- downloads ------------------------------------------------------------------------------------------

    def route_resolve(self, kind: str | None, repo: str, rev: str, path: str) -> None:
        commit = self.repo(kind, repo).resolve(rev)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{blob.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream",
        }
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": blob.size})
        byte_range = parse_range(self.headers.get("Range"), blob.size)
        if byte_range is None:
            return self.send_bytes(200, blob.data, headers)
        first, last = byte_range
        headers["Content-Range"] = f"bytes {first}-{last}/{blob.size}"
        self.send_bytes(206, blob.data[first : last + 1], headers)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--user", default=DEFAULT_USER, help="namespace of repos created without one")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    server = HubServer(args.host, args.port, HubStore(args.user), verbose=args.verbose)
    print(f"Local Hub serving at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
