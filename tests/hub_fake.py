"""An offline stand-in for the Hugging Face Hub: a local cache in the Hub's snapshot layout, and a fake `HfApi`.

`cache_repo` lays files out as `huggingface_hub` caches a download (`<type>s--org--name/refs/main` naming a
commit, `snapshots/<commit>/<files>`), so `hf_hub_download` / `snapshot_download` / open_clip's `hf-hub:`
loading find them with HF_HUB_OFFLINE=1. `FakeHfApi` accepts `create_repo`, `upload_folder`,
`upload_file` and `create_commit` (additions) as the real client does, refuses what the Hub refuses (an upload to a repo never created, or
created as another type), and publishes each commit into such a cache, so a push can be loaded back.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path


def _folder(cache: Path, repo_id: str, repo_type: str) -> Path:
    return Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"


def cache_repo(cache: Path, repo_id: str, files: dict[str, bytes | Path], repo_type: str = "model") -> Path:
    """Write `files` (path in repo -> bytes or a file to copy) as the cached `main` of a repo; returns the snapshot."""
    digest = hashlib.sha1(repr(sorted(files)).encode() + repo_id.encode())
    for name in sorted(files):
        v = files[name]
        digest.update(v if isinstance(v, bytes) else Path(v).read_bytes())
    commit = digest.hexdigest()
    root = _folder(cache, repo_id, repo_type)
    snap = root / "snapshots" / commit
    for name, v in files.items():
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(v, bytes):
            target.write_bytes(v)
        else:
            shutil.copyfile(v, target)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


@dataclass
class Commit:
    repo_id: str
    repo_type: str
    files: dict[str, bytes]
    message: str

    @property
    def commit_url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}/commit/fake"


@dataclass
class FakeHfApi:
    """Records repos and commits; with `cache`, every commit becomes the cached `main` of its repo."""

    cache: Path | None = None
    repos: dict[str, dict] = field(default_factory=dict)  # repo_id -> {"repo_type", "private"}
    commits: list[Commit] = field(default_factory=list)

    def create_repo(self, repo_id: str, *, repo_type: str | None = None, private: bool | None = None,
                    exist_ok: bool = False, **_):
        repo_type = repo_type or "model"
        have = self.repos.get(repo_id)
        if have is not None:
            if not exist_ok:
                raise ValueError(f"409: {repo_id} exists")
            if have["repo_type"] != repo_type:
                raise ValueError(f"409: {repo_id} exists as a {have['repo_type']} repo, not a {repo_type} repo")
        else:
            self.repos[repo_id] = {"repo_type": repo_type, "private": private}
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def _check(self, repo_id: str, repo_type: str | None) -> str:
        repo_type = repo_type or "model"
        have = self.repos.get(repo_id)
        if have is None or have["repo_type"] != repo_type:
            raise ValueError(f"404: no {repo_type} repo {repo_id}")
        return repo_type

    def _commit(self, repo_id: str, repo_type: str, files: dict[str, bytes], message: str) -> Commit:
        previous = next((c.files for c in reversed(self.commits) if c.repo_id == repo_id), {})
        commit = Commit(repo_id, repo_type, {**previous, **files}, message)
        self.commits.append(commit)
        if self.cache is not None:
            cache_repo(self.cache, repo_id, commit.files, repo_type)
        return commit

    def upload_folder(self, *, folder_path, repo_id: str, repo_type: str | None = None, path_in_repo: str = "",
                      allow_patterns=None, ignore_patterns=None, commit_message: str = "", **_):
        repo_type = self._check(repo_id, repo_type)
        root = Path(folder_path)
        allow = [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns
        ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns or []
        files = {}
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and (allow is None or any(fnmatch.fnmatch(rel, a) for a in allow)) \
                    and not any(fnmatch.fnmatch(rel, i) for i in ignore):
                files[f"{path_in_repo.strip('/')}/{rel}".lstrip("/")] = p.read_bytes()
        if not files:
            raise ValueError(f"nothing to upload from {root}")
        return self._commit(repo_id, repo_type, files, commit_message)

    def upload_file(self, *, path_or_fileobj, path_in_repo: str, repo_id: str, repo_type: str | None = None,
                    commit_message: str = "", **_):
        repo_type = self._check(repo_id, repo_type)
        data = path_or_fileobj if isinstance(path_or_fileobj, bytes) else Path(path_or_fileobj).read_bytes()
        return self._commit(repo_id, repo_type, {path_in_repo: data}, commit_message)

    def create_commit(self, *, repo_id: str, operations, commit_message: str = "", repo_type: str | None = None, **_):
        from huggingface_hub import CommitOperationAdd

        repo_type = self._check(repo_id, repo_type)
        files = {}
        for op in operations:
            if not isinstance(op, CommitOperationAdd):
                raise ValueError(f"this fake only adds files, got {type(op).__name__}")
            src = op.path_or_fileobj
            files[op.path_in_repo] = src if isinstance(src, bytes) else Path(src).read_bytes()
        return self._commit(repo_id, repo_type, files, commit_message)
