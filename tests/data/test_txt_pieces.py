"""A large ``.txt`` file is read in bounded pieces cut at line breaks, and decoded exactly (issue 18 item 4)."""

from __future__ import annotations

import random

import pytest

from lightning_gpt.data.sources import TXT_PIECE_CHARS, resolve_source

MULTI = "aé€😀"  # 1-, 2-, 3- and 4-byte UTF-8 characters


def _paragraphs(n_chars: int, seed: int = 0) -> str:
    """Paragraphs of lines of multi-byte words, about ``n_chars`` characters."""
    rng = random.Random(seed)
    out, size = [], 0
    while size < n_chars:
        line = " ".join("".join(rng.choice(MULTI) for _ in range(rng.randint(1, 9))) for _ in range(rng.randint(1, 12)))
        out.append(line + ("\n\n" if rng.random() < 0.2 else "\n"))
        size += len(out[-1])
    return "".join(out)


def test_a_large_file_is_several_bounded_documents_that_join_to_its_text_exactly(tmp_path):
    text = _paragraphs(int(2.6 * TXT_PIECE_CHARS))
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    docs = list(resolve_source(str(path)).documents())
    assert len(docs) == 3
    assert "".join(docs) == text  # no character lost, split or doubled, although reads end inside characters
    assert all(len(d) <= TXT_PIECE_CHARS for d in docs)
    assert all(d.endswith("\n\n") for d in docs[:-1])  # cut after a blank line (a paragraph end)


def test_a_file_up_to_one_piece_is_one_document(tmp_path):
    text = _paragraphs(TXT_PIECE_CHARS - 100)
    path = tmp_path / "small.txt"
    path.write_text(text, encoding="utf-8")
    assert list(resolve_source(str(path)).documents()) == [text]


def test_without_blank_lines_documents_end_at_line_breaks_and_a_huge_line_is_cut_between_characters(tmp_path):
    lines = "".join(f"line {i} {MULTI * 5}\n" for i in range(120_000))
    (tmp_path / "lines.txt").write_text(lines, encoding="utf-8")
    docs = list(resolve_source(str(tmp_path / "lines.txt")).documents())
    assert len(docs) > 1 and "".join(docs) == lines and all(d.endswith("\n") for d in docs)
    one_line = "😀é" * (TXT_PIECE_CHARS // 2 + 17)  # no line break at all: 4- and 2-byte characters
    (tmp_path / "line.txt").write_text(one_line, encoding="utf-8")
    docs = list(resolve_source(str(tmp_path / "line.txt")).documents())
    assert [len(d) for d in docs] == [TXT_PIECE_CHARS, len(one_line) - TXT_PIECE_CHARS]
    assert "".join(docs) == one_line


def test_crlf_lone_cr_and_a_bom_read_as_python_text_mode_does(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes(b"\xef\xbb\xbffirst line\r\nsecond\rthird\n\r\nend \xe2\x82\xac\r\n")
    assert list(resolve_source(str(path)).documents()) == ["first line\nsecond\nthird\n\nend €\n"]
    crlf = tmp_path / "crlf.txt"  # a \r\n pair split by a piece boundary is still one line end
    body = ("x" * 999 + "\r\n") * (3 * TXT_PIECE_CHARS // 1000)
    crlf.write_bytes(body.encode())
    docs = list(resolve_source(str(crlf)).documents())
    assert "".join(docs) == body.replace("\r\n", "\n") and "\r" not in "".join(docs)


def test_invalid_utf8_after_the_first_piece_names_the_line_and_byte_offset(tmp_path):
    good = ("ok é line\n" * (TXT_PIECE_CHARS // 10 + 5)).encode()
    path = tmp_path / "bad.txt"
    path.write_bytes(good + b"caf\xe9\n" + b"more\n")
    with pytest.raises(ValueError) as info:
        list(resolve_source(str(path)).documents())
    lineno = good.count(b"\n") + 1
    assert f"{path}:{lineno}:" in str(info.value)
    assert f"byte offset {len(good) + 3} " in str(info.value) and "iconv" in str(info.value)


def test_a_truncated_character_at_the_end_of_the_file_is_an_error(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes("fine text 😀".encode()[:-2])
    with pytest.raises(ValueError, match=r"cut\.txt:1: not valid UTF-8 .* byte offset 10 "):
        list(resolve_source(str(path)).documents())


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-32-le"])
def test_utf16_or_utf32_text_without_bom_is_refused_not_trained_on_with_nul_bytes(tmp_path, encoding):
    # ASCII in UTF-16 without a BOM is valid UTF-8 with a NUL after every letter: it used to be trained on.
    path = tmp_path / "wide.txt"
    path.write_bytes("first line\nsecond line\n".encode(encoding))
    with pytest.raises(ValueError, match=r"wide\.txt:1: holds a NUL character.*UTF-16"):
        list(resolve_source(str(path)).documents())
