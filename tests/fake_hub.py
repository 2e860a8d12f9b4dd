"""A small local stand-in for the Hugging Face Hub, for tests (the real Hub is out of reach here).

It speaks the part of the Hub's HTTP API that the real huggingface_hub client uses to create repos,
commit files (preupload + NDJSON commit, every file "regular", no LFS/Xet), and read them back
(repo info, tree listing, paths-info, resolve), which is what CommitScheduler, upload_folder,
snapshot_download and datasets.load_dataset need. Point HF_ENDPOINT at `hub.url` and the client
runs unchanged. The repos live in memory on the FakeHub object, so `stop()` then `start()` on the
same port is the Hub going down and coming back with its data.
"""
import base64
import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id, repo_type, private):
        self.id, self.type, self.private = repo_id, repo_type, private
        first = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.commits = [(first, {})]  # (sha, {path: bytes}) oldest first; the Hub keeps history too
        self.tags = {}  # tag -> commit sha

    @property
    def head(self):
        return self.commits[-1]

    def at(self, rev):
        rev = unquote(rev)
        if rev == "main":
            return self.head
        for sha, files in self.commits:
            if sha == rev:
                return sha, files
        return None


class FakeHub:
    def __init__(self, port=0, tokens=("hf_fake_write_token",), user="tester", echo_auth_in_errors=False):
        self.tokens = set(tokens)
        self.user = user
        # a leaky proxy could echo the credentials back; used to prove the client side scrubs them
        self.echo_auth_in_errors = echo_auth_in_errors
        self.repos = {}  # (type, id) -> Repo
        self.requests = []  # (method, path, status): what the client did
        self.lock = threading.Lock()
        self.port = port
        self._server = None

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- inspection for tests -----------------------------------------------------------------

    def files(self, repo_id, repo_type="dataset"):
        repo = self.repos.get((repo_type, repo_id))
        return dict(repo.head[1]) if repo else {}

    def commits(self, repo_id, repo_type="dataset"):
        repo = self.repos.get((repo_type, repo_id))
        return len(repo.commits) - 1 if repo else 0

    def tags(self, repo_id, repo_type="model"):
        repo = self.repos.get((repo_type, repo_id))
        return dict(repo.tags) if repo else {}

    def shard_rows(self, repo_id, under="data"):
        """The rows (dicts) of a dataset repo's parquet shards under `under` (dadc/hub_layout.py:
        data/ the flags, votes/ the votes, or one replica's folder), shard by shard."""
        import io

        import pyarrow.parquet as pq

        return [row for path, data in sorted(self.files(repo_id).items())
                if path.startswith(under.rstrip("/") + "/") and path.endswith(".parquet")
                for row in pq.read_table(io.BytesIO(data)).to_pylist()]


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.0"  # one request per connection: stop() really cuts the clients off

    def log_message(self, *args):
        pass

    # --- plumbing -----------------------------------------------------------------------------

    def _send(self, status, body=b"", headers=None, head=False):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.hub.requests.append((self.command, self.path, status))

    def _error(self, status, message, code=None, head=False):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers, head=head)

    def _auth(self):
        """None (anonymous), True (valid token) or False (a token the Hub rejects)."""
        value = self.headers.get("Authorization")
        if not value:
            return None
        return value.removeprefix("Bearer ").strip() in self.hub.tokens

    def _reject(self, head=False):
        # the real Hub's words (huggingface_hub keys on them); the body may echo what was sent
        msg = "Invalid credentials in Authorization header"
        body = f"{msg}: got {self.headers.get('Authorization')}" if self.hub.echo_auth_in_errors else msg
        self._send(401, {"error": body}, {"X-Error-Message": msg}, head=head)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _repo(self, repo_type, repo_id, write=False, head=False):
        """The repo if this caller may see it, else answer the error and return None."""
        auth = self._auth()
        if auth is False or (write and not auth):
            self._reject(head=head)
            return None
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not auth):
            self._error(404, "Repository not found", "RepoNotFound", head=head)
            return None
        return repo

    # --- routes -------------------------------------------------------------------------------

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def _route(self, head=False):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        try:
            with self.hub.lock:
                self._dispatch(parts, query, head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _dispatch(self, p, query, head):
        if self.command == "POST" and p[:3] == ["api", "repos", "create"]:
            return self._create()
        if p[:1] == ["api"] and len(p) >= 4 and p[1] in ("models", "datasets", "spaces"):
            repo_type, repo_id, rest = p[1][:-1], f"{p[2]}/{p[3]}", p[4:]
            if self.command == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo_type, repo_id)
            if self.command == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo_type, repo_id, rest[1])
            if self.command == "GET" and (not rest or (rest[0] == "revision" and len(rest) == 2)):
                return self._info(repo_type, repo_id, rest[1] if rest else "main")
            if self.command == "GET" and len(rest) >= 2 and rest[0] == "tree":
                return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), query)
            if self.command == "POST" and len(rest) == 2 and rest[0] == "tag":
                return self._tag(repo_type, repo_id, rest[1])
            if self.command == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                return self._paths_info(repo_type, repo_id, rest[1])
        if self.command == "POST" and p == ["api", "validate-yaml"]:  # upload_folder checks README.md
            self._body()
            return self._send(200, {"errors": [], "warnings": []})
        if p[:1] == ["api"] and p[1:2] == ["whoami-v2"]:
            if self._auth():
                return self._send(200, {"name": self.hub.user, "type": "user", "orgs": []})
            return self._reject()
        # /{prefix}{ns}/{name}/resolve/{rev}/{path}
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(p[0], "model")
        q = p[1:] if repo_type != "model" else p
        if len(q) >= 5 and q[2] == "resolve" and self.command in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{q[0]}/{q[1]}", q[3], "/".join(q[4:]), head)
        self._error(404, f"no route {self.command} {self.path}", head=head)

    def _create(self):
        auth = self._auth()
        if not auth:
            return self._reject()
        body = json.loads(self._body() or b"{}")
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
        url = f"{self.hub.url}/{PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:
            # the real Hub answers the url with the 409, and huggingface_hub reads it
            return self._send(409, {"error": "You already created this repo", "url": url})
        private = body.get("private") is True or body.get("visibility") == "private"
        self.hub.repos[(repo_type, repo_id)] = Repo(repo_id, repo_type, private)
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _preupload(self, repo_type, repo_id):
        if self._repo(repo_type, repo_id, write=True) is None:
            return
        files = json.loads(self._body())["files"]
        self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in files], "commitOid": None})

    def _commit(self, repo_type, repo_id, rev):
        repo = self._repo(repo_type, repo_id, write=True)
        if repo is None:
            return
        base = repo.at(rev)
        if base is None:
            return self._error(404, f"Revision not found: {rev}", "RevisionNotFound")
        files = dict(base[1])
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header" and value.get("parentCommit") not in (None, base[0]):
                # the real Hub's answer when the branch moved since the revision the client read
                return self._error(412, "A commit has happened since. Please refresh and try again.")
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                path = value["path"].rstrip("/")
                for k in [k for k in files if k == path or k.startswith(path + "/")]:
                    del files[k]
            elif key != "header":
                return self._error(400, f"fake hub does not support {key!r} commit operations")
        sha = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        repo.commits.append((sha, files))
        self._send(200, {"commitUrl": f"{self.hub.url}/{PREFIX[repo_type]}{repo_id}/commit/{sha}",
                         "commitOid": sha, "pullRequestUrl": None, "success": True})

    def _tag(self, repo_type, repo_id, rev):
        repo = self._repo(repo_type, repo_id, write=True)
        if repo is None:
            return
        at = repo.at(rev)
        if at is None:
            return self._error(404, f"Revision not found: {rev}", "RevisionNotFound")
        tag = json.loads(self._body())["tag"]
        if tag in repo.tags:
            return self._error(409, f"Tag {tag} already exists")
        repo.tags[tag] = at[0]
        self._send(200, {})

    def _info(self, repo_type, repo_id, rev):
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        at = repo.at(rev)
        if at is None:
            return self._error(404, f"Revision not found: {rev}", "RevisionNotFound")
        sha, files = at
        self._send(200, {
            "id": repo_id, "_id": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in sorted(files)],
        })

    def _entries(self, files, paths=None, under="", recursive=True):
        """Tree entries (files and folders) as the Hub lists them."""
        out, dirs = [], set()
        for path in sorted(files):
            if under and not path.startswith(under + "/"):
                continue
            rel = path[len(under) + 1:] if under else path
            if not recursive and "/" in rel:
                dirs.add((under + "/" if under else "") + rel.split("/")[0])
                continue
            if recursive:
                parts = path.split("/")
                for i in range(len(under.split("/")) if under else 0, len(parts) - 1):
                    dirs.add("/".join(parts[: i + 1]))
            data = files[path]
            out.append({"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path})
        return [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)] + out

    def _tree(self, repo_type, repo_id, rev, path, query):
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        at = repo.at(rev)
        if at is None:
            return self._error(404, f"Revision not found: {rev}", "RevisionNotFound")
        files = at[1]
        path = path.strip("/")
        if path and not any(k.startswith(path + "/") for k in files):
            return self._error(404, f"Entry not found: {path}", "EntryNotFound")
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        self._send(200, self._entries(files, under=path, recursive=recursive))

    def _paths_info(self, repo_type, repo_id, rev):
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return
        at = repo.at(rev)
        if at is None:
            return self._error(404, f"Revision not found: {rev}", "RevisionNotFound")
        files = at[1]
        raw = self._body()
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(raw).get("paths", [])
        else:
            paths = parse_qs(raw.decode()).get("paths", [])
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append({"type": "file", "oid": git_blob_sha(files[path]), "size": len(files[path]), "path": path})
            elif any(k.startswith(path + "/") for k in files):
                out.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": path})
        self._send(200, out)

    def _resolve(self, repo_type, repo_id, rev, path, head):
        repo = self._repo(repo_type, repo_id, head=head)
        if repo is None:
            return
        at = repo.at(rev)
        if at is None:
            return self._error(404, f"Revision not found: {rev}", "RevisionNotFound", head=head)
        sha, files = at
        if path not in files:
            return self._error(404, f"Entry not found: {path}", "EntryNotFound", head=head)
        data = files[path]
        self._send(200, data, {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha(data)}"',
                               "Content-Type": "application/octet-stream",
                               "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.split('/')[-1])}"},
                   head=head)
