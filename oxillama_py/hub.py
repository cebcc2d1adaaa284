"""GGUF files of Hugging Face Hub repositories, found in the local Hugging Face cache.

Local cache only, nothing is downloaded: this module never opens a network
connection and never writes to the cache. It reads the layout that
``huggingface_hub`` (``hf download``, ``hf_hub_download``) leaves on disk, so a
model fetched once with those tools can be loaded here by its repo id, without
``huggingface_hub`` being installed::

    <cache>/models--{owner}--{name}/refs/{revision}        a commit hash
    <cache>/models--{owner}--{name}/snapshots/{commit}/... the files (symlinks into blobs/)
    <cache>/models--{owner}--{name}/blobs/{etag}           the bytes

``<cache>`` is ``$HF_HUB_CACHE`` (or the legacy ``$HUGGINGFACE_HUB_CACHE``),
else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
``~/.cache/huggingface/hub``, read on every call (not at import) so a changed
environment is honoured. An empty variable counts as unset.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path, PurePosixPath, PureWindowsPath

from .checks import check_type
from .errors import LoadError
from .paths import check_path

__all__ = ["DEFAULT_REVISION", "resolve_cached", "sha256_of"]

DEFAULT_REVISION = "main"

# The Hub's own repo-id rules: "name" or "owner/name", ASCII letters, digits, "_", "-", ".",
# each part starting and ending with a letter, digit or "_", no "--" or "..", at most 96 characters.
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_REPO_PART}/)?{_REPO_PART}")
_REPO_ID_MAX = 96
_COMMIT = re.compile(r"[0-9a-f]{40}")
_CHUNK = 1 << 20  # 1 MiB: large enough to hash at disk speed, small enough not to matter in memory
_CACHE_VARS = "HF_HUB_CACHE, HF_HOME or XDG_CACHE_HOME"


def resolve_cached(repo_id: str, *, filename: str | None = None, revision: str | None = None) -> Path:
    """The cached file ``filename`` of ``repo_id`` at ``revision``, or a :class:`LoadError` saying how to fetch it.

    ``revision`` is a branch or tag (looked up in ``refs/``, default ``"main"``)
    or a full 40-hex commit hash. ``filename`` is the path inside the repository
    (``"sub/model.gguf"``); left out, the snapshot must hold exactly one ``.gguf``.
    The path returned is the snapshot's entry, not the blob it links to: it keeps
    the ``.gguf`` name, and llama.cpp finds the other parts of a split model next to it.
    """
    _check_repo_id(repo_id)
    if filename is not None:
        _check_filename(filename)
    if revision is None:
        revision = DEFAULT_REVISION
    _check_revision(revision)

    cache = _hub_cache_dir()
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        raise _not_cached(
            f"{repo_id} is not in the Hugging Face cache: there is no folder {repo_dir}"
            f" (the cache folder comes from {_CACHE_VARS})",
            repo_id,
            filename,
            revision,
        )
    commit = _commit_of(repo_dir, repo_id, filename, revision)
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        raise _not_cached(
            f"revision {revision!r} of {repo_id} is not in the Hugging Face cache: there is no folder {snapshot}",
            repo_id,
            filename,
            revision,
        )
    if filename is None:
        filename = _only_gguf(snapshot, repo_id, revision)
    path = snapshot.joinpath(*PurePosixPath(filename).parts)
    if path.is_file():
        return path
    if path.is_symlink() and not path.exists():
        raise _not_cached(
            f"{filename} of {repo_id} is only partly in the Hugging Face cache: {path} is a symlink to"
            f" {os.readlink(path)}, which does not exist (an interrupted download or a pruned cache?)",
            repo_id,
            filename,
            revision,
        )
    if path.exists():
        raise LoadError(f"{path} in the Hugging Face cache is not a file (is {filename!r} a folder of {repo_id}?)")
    problem = f"{filename} of {repo_id} (revision {revision!r}) is not in the Hugging Face cache: no file {path}"
    if (repo_dir / ".no_exist" / commit).joinpath(*PurePosixPath(filename).parts).is_file():
        problem += f"; the Hub told an earlier download that the repository has no such file at commit {commit}"
    raise _not_cached(problem, repo_id, filename, revision)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file as lowercase hex, to check a cached model against a recorded digest.

    Read in 1 MiB chunks so a multi-gigabyte model is never held in memory.
    """
    check_path(path)
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        with open(path, "rb") as handle:
            while count := handle.readinto(buffer):
                digest.update(view[:count])
    except OSError as exc:
        raise LoadError(f"cannot read {os.fspath(path)} to hash it: {exc}") from exc
    return digest.hexdigest()


def _hub_cache_dir() -> Path:
    """Where ``huggingface_hub`` keeps its cache, by its own precedence, so both agree on one folder."""
    hub = _env("HF_HUB_CACHE") or _env("HUGGINGFACE_HUB_CACHE")
    if hub is None:
        home = _env("HF_HOME")
        if home is None:
            xdg_cache = _env("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            home = os.path.join(xdg_cache, "huggingface")
        hub = os.path.join(_expand(home), "hub")
    return Path(_expand(hub)).absolute()


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


def _commit_of(repo_dir: Path, repo_id: str, filename: str | None, revision: str) -> str:
    """A commit hash is used as is; a branch or tag goes through the ref the last download wrote."""
    if _COMMIT.fullmatch(revision.lower()):
        return revision.lower()
    ref = repo_dir.joinpath("refs", *revision.split("/"))
    try:
        commit = ref.read_text(encoding="ascii").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        known = _cached_refs(repo_dir)
        have = f" (cached refs: {', '.join(known)})" if known else ""
        raise _not_cached(
            f"revision {revision!r} of {repo_id} is not in the Hugging Face cache: there is no ref file {ref}{have}",
            repo_id,
            filename,
            revision,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(f"cannot read the Hugging Face cache ref {ref}: {exc}") from exc
    if not _COMMIT.fullmatch(commit):
        raise LoadError(f"the Hugging Face cache ref {ref} does not hold a commit hash (found {commit[:80]!r})")
    return commit


def _cached_refs(repo_dir: Path) -> list[str]:
    refs = repo_dir / "refs"
    try:
        return sorted(p.relative_to(refs).as_posix() for p in refs.rglob("*") if p.is_file())
    except OSError:
        return []


def _only_gguf(snapshot: Path, repo_id: str, revision: str) -> str:
    """Pick the one GGUF of a snapshot; guessing between quantizations would load a model nobody asked for."""
    found: list[str] = []
    for folder, _dirs, files in os.walk(snapshot):
        found += [
            Path(folder, name).relative_to(snapshot).as_posix() for name in files if name.lower().endswith(".gguf")
        ]
    found.sort()
    if len(found) == 1:
        return found[0]
    if not found:
        raise _not_cached(
            f"revision {revision!r} of {repo_id} is cached in {snapshot} but holds no .gguf file",
            repo_id,
            None,
            revision,
        )
    raise LoadError(
        f"revision {revision!r} of {repo_id} holds {len(found)} .gguf files in {snapshot}: {', '.join(found)};"
        " pass filename= to choose one"
    )


def _not_cached(problem: str, repo_id: str, filename: str | None, revision: str) -> LoadError:
    """The error for anything missing: what was looked for, and the command that puts it there."""
    args = f"{repo_id} {shlex.quote(filename) if filename else 'FILE.gguf'}"
    if revision != DEFAULT_REVISION:
        args += f" --revision {shlex.quote(revision)}"
    return LoadError(
        f"{problem}. oxillama_py never downloads: fetch the file into the cache first with"
        f" `hf download {args}` (or the older `huggingface-cli download {args}`),"
        " or pass model_path= with a local GGUF file"
    )


def _check_repo_id(repo_id: object) -> None:
    repo_id = check_type("repo_id", repo_id, str, "a str like 'owner/name'")
    if (
        len(repo_id) > _REPO_ID_MAX
        or not _REPO_ID.fullmatch(repo_id)
        or "--" in repo_id
        or ".." in repo_id
        or repo_id.endswith(".git")
    ):
        raise ValueError(
            f"repo_id must be 'owner/name' or 'name' (letters, digits, '-', '_', '.'; no '--' or '..';"
            f" at most {_REPO_ID_MAX} characters), got {repo_id!r}"
        )


def _check_filename(filename: object) -> None:
    """A path inside the repository, so it can never reach outside the snapshot folder."""
    filename = check_type("filename", filename, str, "a str or None")
    parts = re.split(r"[/\\]", filename)
    if (
        not filename
        or "\0" in filename
        or PurePosixPath(filename).is_absolute()
        or PureWindowsPath(filename).drive
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise ValueError(
            f"filename must be a relative path inside the repository like 'model.gguf' or 'sub/model.gguf'"
            f" (no '..', '.', empty or absolute parts), got {filename!r}"
        )
    if "\\" in filename:
        raise ValueError(f"filename must use '/' between folders, as the Hub does, got {filename!r}")


def _check_revision(revision: object) -> None:
    """A branch, tag or commit hash; it names a file under refs/, so it must stay inside it."""
    revision = check_type("revision", revision, str, "a str or None")
    if not revision or "\0" in revision or "\\" in revision or any(p in ("", ".", "..") for p in revision.split("/")):
        raise ValueError(f"revision must be a branch, tag or commit hash like 'main', got {revision!r}")
