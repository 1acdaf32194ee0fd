"""Which files a local source reads: each real file once, never hidden files, backups or other types (issue 22.6)."""

from __future__ import annotations

import logging
import os

import pytest

from lightning_gpt.data.sources import resolve_source


def _tree(root):
    (root / "a" / "sub").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "a" / "one.txt").write_text("one")
    (root / "a" / "sub" / "two.txt").write_text("two")
    (root / "other" / "three.txt").write_text("three")
    return root / "a"


def _docs(source: str) -> list[str]:
    return list(resolve_source(source).documents())


def test_a_link_to_a_parent_folder_does_not_make_a_glob_read_files_again_and_again(tmp_path):
    a = _tree(tmp_path)
    os.symlink("..", a / "sub" / "up")  # a cycle: glob.glob('a/**') lists each file ~40 times, to the path limit
    assert _docs(str(a / "**" / "*.txt")) == ["one", "two"]
    assert _docs(str(a)) == ["one", "two"]


def test_links_to_folders_are_followed_once_and_links_to_files_are_read_once(tmp_path, caplog):
    a = _tree(tmp_path)
    os.symlink(tmp_path / "other", a / "linked")  # a linked data folder: data the user meant
    os.symlink("one.txt", a / "alias.txt")  # the same file under two names
    os.link(a / "sub" / "two.txt", a / "hard.txt")  # a hard link: the same inode
    os.symlink(a / "sub", a / "sub-again")  # the same folder twice
    with caplog.at_level(logging.WARNING):
        for source in (str(a), str(a / "**"), str(a / "**" / "*.txt"), str(a / "*.txt")):
            docs = _docs(source)
            assert sorted(docs) == sorted(set(docs)), source
            assert {"one", "two"} <= set(docs), source
        assert sorted(_docs(str(a))) == ["one", "three", "two"]
    assert any("is the same file as" in r.getMessage() and "read once" in r.getMessage() for r in caplog.records)


def test_double_star_patterns_that_overlap_read_each_file_once(tmp_path):
    a = _tree(tmp_path)
    assert _docs(str(a / "**" / "**" / "*.txt")) == ["one", "two"]
    assert _docs(str(a / "**" / "sub" / "**" / "*.txt")) == ["two"]
    assert resolve_source(str(a / "**" / "*.txt")).files() == [str(a / "one.txt"), str(a / "sub" / "two.txt")]


def test_hidden_files_backups_and_lock_files_are_never_read(tmp_path, caplog):
    d = tmp_path / "data"
    d.mkdir()
    (d / "good.txt").write_text("good")
    (d / ".notes.txt").write_text("hidden")
    (d / "good.txt~").write_text("backup")
    (d / "#good.txt#").write_text("auto-save")
    (d / ".DS_Store").write_bytes(b"\x00\x01binary")
    os.symlink("user@host.1234:1700000000", d / ".#good.txt")  # an Emacs lock file: a dangling link
    (d / ".ipynb_checkpoints").mkdir()
    (d / ".ipynb_checkpoints" / "good-checkpoint.txt").write_text("a copy")
    (d / ".git").mkdir()
    (d / ".git" / "HEAD.txt").write_text("git")
    with caplog.at_level(logging.WARNING):
        assert _docs(str(d)) == ["good"]
    assert _docs(str(d / "*")) == ["good"]
    assert _docs(str(d / "**" / "*.txt")) == ["good"]
    assert _docs(str(d / ".*.txt")) == ["hidden"]  # named explicitly, as glob does
    assert _docs(str(d / ".notes.txt")) == ["hidden"]


def test_other_types_in_a_folder_are_left_out_with_a_warning_and_compressed_text_is_an_error(tmp_path, caplog):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.txt").write_text("text a")
    (d / "B.TXT").write_text("text b")  # an upper-case suffix is the same type
    (d / "README.md").write_text("# not data")
    (d / "image.png").write_bytes(b"\x89PNG\r\n")
    (d / "weights.bin").write_bytes(b"\x00" * 8)
    with caplog.at_level(logging.WARNING):
        assert _docs(str(d)) == ["text b", "text a"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "left out 3 file(s)" in warned and "README.md" in warned
    with pytest.raises(ValueError, match="unsupported file type 'README.md'"):  # a glob names what it matches
        resolve_source(str(d / "*")).files()
    (d / "c.jsonl.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match=r"c\.jsonl\.gz' is compressed .*gunzip"):
        resolve_source(str(d)).files()


def test_a_broken_link_is_named(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.txt").write_text("text")
    os.symlink(tmp_path / "gone.txt", d / "b.txt")
    with pytest.raises(FileNotFoundError, match=r"b\.txt' is a broken symbolic link .*gone\.txt"):
        resolve_source(str(d)).files()
    with pytest.raises(FileNotFoundError, match=r"no such file or directory \(a broken symbolic link"):
        resolve_source(str(d / "b.txt")).files()


def test_an_empty_file_among_good_ones_is_skipped_and_counted(tmp_path, caplog):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.txt").write_text("text a")
    (d / "b.txt").write_text("")
    (d / "c.txt").write_text(" \n\n ")
    with caplog.at_level(logging.WARNING):
        assert _docs(str(d)) == ["text a"]
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 1 and "2 empty or whitespace-only files" in warned[0] and str(d / "b.txt") in warned[0]


def test_relative_globs_and_home(tmp_path, monkeypatch):
    _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _docs("a/*.txt") == ["one"] and _docs("*/sub/*.txt") == ["two"]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _docs("~/a/**/*.txt") == ["one", "two"]
