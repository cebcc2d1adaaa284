"""oxillama_py.hub: GGUF files found in a hand-built Hugging Face cache, laid out as huggingface_hub leaves it."""

from __future__ import annotations

import ast
import hashlib
import os
import struct
from pathlib import Path

import pytest

from oxillama_py import hub
from oxillama_py.errors import LoadError
from oxillama_py.hub import resolve_cached, sha256_of

REPO = "owner/model"
COMMIT_A = "0123456789abcdef0123456789abcdef01234567"
COMMIT_B = "fedcba9876543210fedcba9876543210fedcba98"
CACHE_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


def gguf_bytes(tag: str) -> bytes:
    """A GGUF header (magic, version 3) plus a tag telling the fake files apart."""
    return b"GGUF" + struct.pack("<I", 3) + tag.encode()


def repo_dir(cache: Path, repo_id: str = REPO) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def add_file(cache: Path, commit: str, filename: str, data: bytes, repo_id: str = REPO) -> Path:
    """Store ``data`` as the hub does: a blob named by its hash, a relative symlink to it in the snapshot."""
    folder = repo_dir(cache, repo_id)
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    entry = folder / "snapshots" / commit / filename
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.symlink_to(os.path.relpath(blob, entry.parent))
    return entry


def set_ref(cache: Path, revision: str, commit: str, repo_id: str = REPO) -> None:
    ref = repo_dir(cache, repo_id) / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)  # no trailing newline, as huggingface_hub writes it


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF_HUB_CACHE, every other cache variable cleared, HOME pointed into tmp_path."""
    for name in CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


# -- found ------------------------------------------------------------------------------


def test_single_gguf_on_main(cache: Path) -> None:
    entry = add_file(cache, COMMIT_A, "model-Q4_K_M.gguf", gguf_bytes("a"))
    add_file(cache, COMMIT_A, "README.md", b"# model card")
    set_ref(cache, "main", COMMIT_A)

    path = resolve_cached(REPO)

    assert path == entry
    assert path.is_symlink()  # the snapshot entry, not the blob, so the .gguf name is kept
    assert path.parent == repo_dir(cache) / "snapshots" / COMMIT_A
    assert path.read_bytes() == gguf_bytes("a")
    assert resolve_cached(REPO, filename="model-Q4_K_M.gguf", revision="main") == entry


def test_filename_picks_one_of_several(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model-Q4_K_M.gguf", gguf_bytes("q4"))
    q8 = add_file(cache, COMMIT_A, "model-Q8_0.gguf", gguf_bytes("q8"))
    set_ref(cache, "main", COMMIT_A)

    assert resolve_cached(REPO, filename="model-Q8_0.gguf") == q8


def test_several_ggufs_without_filename(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model-Q4_K_M.gguf", gguf_bytes("q4"))
    add_file(cache, COMMIT_A, "Q8/model-Q8_0.gguf", gguf_bytes("q8"))
    set_ref(cache, "main", COMMIT_A)

    with pytest.raises(LoadError, match="filename=") as info:
        resolve_cached(REPO)
    assert "2 .gguf files" in str(info.value)
    assert "Q8/model-Q8_0.gguf" in str(info.value)
    assert "model-Q4_K_M.gguf" in str(info.value)


def test_no_gguf_in_snapshot(cache: Path) -> None:
    add_file(cache, COMMIT_A, "config.json", b"{}")
    set_ref(cache, "main", COMMIT_A)

    with pytest.raises(LoadError, match=r"holds no \.gguf file") as info:
        resolve_cached(REPO)
    assert "never downloads" in str(info.value)
    assert f"hf download {REPO} FILE.gguf" in str(info.value)


def test_subfolder_filename(cache: Path) -> None:
    entry = add_file(cache, COMMIT_A, "quants/Q4_K_M/model.gguf", gguf_bytes("sub"))
    add_file(cache, COMMIT_A, "README.md", b"card")
    set_ref(cache, "main", COMMIT_A)

    assert resolve_cached(REPO, filename="quants/Q4_K_M/model.gguf") == entry
    assert resolve_cached(REPO) == entry  # the lone GGUF is found below the snapshot's top level


def test_non_main_ref(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("main"))
    tagged = add_file(cache, COMMIT_B, "model.gguf", gguf_bytes("v1"))
    set_ref(cache, "main", COMMIT_A)
    set_ref(cache, "v1.0", COMMIT_B)
    set_ref(cache, "refs/pr/1", COMMIT_B)  # a PR revision is stored under refs/refs/pr/1

    assert resolve_cached(REPO, revision="v1.0") == tagged
    assert resolve_cached(REPO, revision="refs/pr/1") == tagged
    assert resolve_cached(REPO).read_bytes() == gguf_bytes("main")


def test_ref_with_trailing_newline(cache: Path) -> None:
    entry = add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    (repo_dir(cache) / "refs").mkdir()
    (repo_dir(cache) / "refs" / "main").write_text(COMMIT_A + "\n")

    assert resolve_cached(REPO) == entry


def test_commit_hash_revision(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    pinned = add_file(cache, COMMIT_B, "model.gguf", gguf_bytes("b"))
    set_ref(cache, "main", COMMIT_A)  # no ref names COMMIT_B: the hash is enough

    assert resolve_cached(REPO, revision=COMMIT_B) == pinned
    assert resolve_cached(REPO, filename="model.gguf", revision=COMMIT_B.upper()) == pinned


def test_single_name_repo_id(cache: Path) -> None:
    entry = add_file(cache, COMMIT_A, "gpt2.gguf", gguf_bytes("g"), repo_id="gpt2")
    set_ref(cache, "main", COMMIT_A, repo_id="gpt2")

    assert resolve_cached("gpt2") == entry
    assert entry.is_relative_to(cache / "models--gpt2")


def test_relative_cache_dir_gives_absolute_path(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_A)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", "hub")

    path = resolve_cached(REPO)
    assert path.is_absolute()
    assert path.name == "model.gguf"
    assert path.parent.samefile(cache / "models--owner--model" / "snapshots" / COMMIT_A)


def test_nothing_is_written_to_the_cache(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_A)
    before = tree(cache)

    resolve_cached(REPO)
    with pytest.raises(LoadError):
        resolve_cached(REPO, filename="other.gguf")
    with pytest.raises(LoadError):
        resolve_cached(REPO, revision="dev")
    with pytest.raises(LoadError):
        resolve_cached("someone/else")

    assert tree(cache) == before


def test_module_imports_nothing_that_downloads() -> None:
    source = Path(hub.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "hashlib", "os", "re", "shlex", "pathlib"}, imported


# -- not cached -------------------------------------------------------------------------


def assert_explains_fetching(message: str, command_args: str) -> None:
    assert "never downloads" in message
    assert f"`hf download {command_args}`" in message
    assert f"`huggingface-cli download {command_args}`" in message
    assert "model_path=" in message


def test_repo_not_cached(cache: Path) -> None:
    with pytest.raises(LoadError) as info:
        resolve_cached(REPO, filename="model.gguf")
    message = str(info.value)
    assert str(repo_dir(cache)) in message
    assert "HF_HUB_CACHE" in message
    assert_explains_fetching(message, f"{REPO} model.gguf")


def test_ref_not_cached(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_A)

    with pytest.raises(LoadError) as info:
        resolve_cached(REPO, filename="model.gguf", revision="dev")
    message = str(info.value)
    assert str(repo_dir(cache) / "refs" / "dev") in message
    assert "cached refs: main" in message
    assert_explains_fetching(message, f"{REPO} model.gguf --revision dev")


def test_no_refs_folder(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))  # fetched by commit only: no refs/ at all

    with pytest.raises(LoadError, match="no ref file"):
        resolve_cached(REPO)


def test_ref_to_missing_snapshot(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_B)

    with pytest.raises(LoadError) as info:
        resolve_cached(REPO)
    assert str(repo_dir(cache) / "snapshots" / COMMIT_B) in str(info.value)
    assert_explains_fetching(str(info.value), f"{REPO} FILE.gguf")


def test_commit_hash_not_cached(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_A)

    with pytest.raises(LoadError) as info:
        resolve_cached(REPO, filename="model.gguf", revision=COMMIT_B)
    assert str(repo_dir(cache) / "snapshots" / COMMIT_B) in str(info.value)
    assert_explains_fetching(str(info.value), f"{REPO} model.gguf --revision {COMMIT_B}")


def test_file_not_cached(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model-Q4_K_M.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_A)

    with pytest.raises(LoadError) as info:
        resolve_cached(REPO, filename="model-Q8_0.gguf")
    message = str(info.value)
    assert str(repo_dir(cache) / "snapshots" / COMMIT_A / "model-Q8_0.gguf") in message
    assert "earlier download" not in message
    assert_explains_fetching(message, f"{REPO} model-Q8_0.gguf")


def test_file_recorded_as_missing_on_the_hub(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_A)
    marker = repo_dir(cache) / ".no_exist" / COMMIT_A / "model-Q8_0.gguf"
    marker.parent.mkdir(parents=True)
    marker.touch()

    with pytest.raises(LoadError, match=f"no such file at commit {COMMIT_A}"):
        resolve_cached(REPO, filename="model-Q8_0.gguf")


def test_dangling_symlink(cache: Path) -> None:
    entry = add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_A)
    entry.resolve().unlink()  # the blob is gone, the snapshot's symlink is left behind

    for kwargs in ({"filename": "model.gguf"}, {}):
        with pytest.raises(LoadError, match="symlink") as info:
            resolve_cached(REPO, **kwargs)
        message = str(info.value)
        assert str(entry) in message
        assert "does not exist" in message
        assert_explains_fetching(message, f"{REPO} model.gguf")


def test_filename_is_a_folder(cache: Path) -> None:
    add_file(cache, COMMIT_A, "sub/model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_A)

    with pytest.raises(LoadError, match="not a file"):
        resolve_cached(REPO, filename="sub")


def test_ref_without_commit_hash(cache: Path) -> None:
    add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", "not a hash")

    with pytest.raises(LoadError, match="does not hold a commit hash"):
        resolve_cached(REPO)


# -- where the cache is -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"HF_HUB_CACHE": "c1", "HUGGINGFACE_HUB_CACHE": "c2", "HF_HOME": "h", "XDG_CACHE_HOME": "x"}, "c1"),
        ({"HUGGINGFACE_HUB_CACHE": "c2", "HF_HOME": "h", "XDG_CACHE_HOME": "x"}, "c2"),
        ({"HF_HOME": "h", "XDG_CACHE_HOME": "x"}, "h/hub"),
        ({"XDG_CACHE_HOME": "x"}, "x/huggingface/hub"),
        ({}, "home/.cache/huggingface/hub"),
        ({"HF_HUB_CACHE": "", "HF_HOME": "h"}, "h/hub"),  # empty counts as unset
        ({"HF_HUB_CACHE": "~/tilde"}, "home/tilde"),
        ({"HF_HOME": "~/tilde-home"}, "home/tilde-home/hub"),
    ],
    ids=["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "default", "empty", "tilde", "home~"],
)
def test_cache_location_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    candidates = [
        "c1",
        "c2",
        "h/hub",
        "x/huggingface/hub",
        "home/.cache/huggingface/hub",
        "home/tilde",
        "home/tilde-home/hub",
    ]
    for folder in candidates:  # a different file in every place a cache could be
        add_file(tmp_path / folder, COMMIT_A, "model.gguf", gguf_bytes(folder))
        set_ref(tmp_path / folder, "main", COMMIT_A)
    for name in CACHE_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in env.items():
        monkeypatch.setenv(name, value if value.startswith("~") or not value else str(tmp_path / value))

    path = resolve_cached(REPO)

    assert path.read_bytes() == gguf_bytes(expected)
    assert path == tmp_path / expected / "models--owner--model" / "snapshots" / COMMIT_A / "model.gguf"


# -- bad arguments ----------------------------------------------------------------------


@pytest.fixture
def no_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if resolve_cached gets as far as looking for the cache."""

    def touched() -> Path:
        raise AssertionError("the cache was looked at before the arguments were checked")

    monkeypatch.setattr(hub, "_hub_cache_dir", touched)


@pytest.mark.parametrize("repo_id", [None, 3, b"owner/model", Path("owner/model")])
@pytest.mark.usefixtures("no_disk")
def test_repo_id_type(repo_id: object) -> None:
    with pytest.raises(TypeError, match="repo_id"):
        resolve_cached(repo_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "repo_id",
    ["", "/", "owner/", "/model", "a/b/c", "owner--x/model", "own..er/model", "../model", "owner/.model",
     "owner/model.git", "-owner/model", "owner/model-", "owner/mo del", "owner\\model", "x" * 97],
)  # fmt: skip
@pytest.mark.usefixtures("no_disk")
def test_repo_id_value(repo_id: str) -> None:
    with pytest.raises(ValueError, match="repo_id"):
        resolve_cached(repo_id)


@pytest.mark.parametrize("filename", [3, b"model.gguf", Path("model.gguf")])
@pytest.mark.usefixtures("no_disk")
def test_filename_type(filename: object) -> None:
    with pytest.raises(TypeError, match="filename"):
        resolve_cached(REPO, filename=filename)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "filename",
    ["", "../model.gguf", "sub/../../model.gguf", "..", "/etc/passwd", "C:/model.gguf", "C:model.gguf",
     "..\\model.gguf", "sub\\model.gguf", "sub//model.gguf", "./model.gguf", "sub/", "model\0.gguf"],
)  # fmt: skip
@pytest.mark.usefixtures("no_disk")
def test_filename_value(filename: str) -> None:
    with pytest.raises(ValueError, match="filename"):
        resolve_cached(REPO, filename=filename)


@pytest.mark.usefixtures("no_disk")
def test_revision_type() -> None:
    with pytest.raises(TypeError, match="revision"):
        resolve_cached(REPO, revision=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("revision", ["", "../main", "refs/../../x", "/main", "a\\b", "main/"])
@pytest.mark.usefixtures("no_disk")
def test_revision_value(revision: str) -> None:
    with pytest.raises(ValueError, match="revision"):
        resolve_cached(REPO, revision=revision)


def test_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        resolve_cached(REPO, "model.gguf")  # type: ignore[call-arg]


# -- sha256_of --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 9, (1 << 20) * 2 + 12345], ids=["empty", "small", "several-chunks"])
def test_sha256_of_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = (gguf_bytes("x") * (size // 9 + 1))[:size]
    path = tmp_path / "model.gguf"
    path.write_bytes(data)

    expected = hashlib.sha256(data).hexdigest()
    assert sha256_of(path) == expected
    assert sha256_of(str(path)) == expected


def test_sha256_of_cached_entry_is_the_blob_name(cache: Path) -> None:
    entry = add_file(cache, COMMIT_A, "model.gguf", gguf_bytes("a"))
    set_ref(cache, "main", COMMIT_A)

    assert sha256_of(resolve_cached(REPO)) == entry.resolve().name  # LFS blobs are named by their SHA-256


def test_sha256_of_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="cannot read"):
        sha256_of(tmp_path / "absent.gguf")


def test_sha256_of_type() -> None:
    with pytest.raises(TypeError, match="path must be a str or an os.PathLike, got int"):
        sha256_of(3)  # type: ignore[arg-type]
