"""Kernel symbol lookup for drop locations: nearest text symbol at or below an
address, and lookups racing the background load (a cached probe start delivers
events within milliseconds, while /proc/kallsyms is still being read)."""

from __future__ import annotations

import threading
from pathlib import Path

from vethtrace.collect.kallsyms import Kallsyms


def _table(path: Path, count: int) -> None:
    lines = [f"{0xFFFF0000 + 16 * i:016x} {'t' if i % 2 else 'T'} fn{i}" for i in range(count)]
    lines.insert(3, "ffffffff00000000 d some_data")  # not text: ignored
    path.write_text("\n".join(lines) + "\n")


def test_nearest_symbol_below(tmp_path: Path) -> None:
    _table(tmp_path / "kallsyms", 10)
    ks = Kallsyms(str(tmp_path / "kallsyms"))
    assert ks.name(0xFFFF0000) == "fn0"
    assert ks.name(0xFFFF0000 + 16 * 3 + 5) == "fn3"
    assert ks.name(0x1000) is None  # below every symbol
    assert ks.name(0) is None


def test_lookups_while_loading_in_the_background(tmp_path: Path) -> None:
    _table(tmp_path / "kallsyms", 200_000)  # ~0.2 s to load: lookups land mid-load
    errors: list[BaseException] = []
    for _ in range(8):
        ks = Kallsyms(str(tmp_path / "kallsyms"))
        ks.preload()

        def look(ks: Kallsyms = ks) -> None:
            try:
                for i in range(0, 200_000, 5_000):
                    assert ks.name(0xFFFF0000 + 16 * i + 1) == f"fn{i}"
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=look) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]


def test_a_kept_table_answers_as_the_file_did(tmp_path: Path) -> None:
    """The parsed table is kept on disk (root only: kernel addresses) and read
    back in milliseconds by the next start; a damaged copy is read again."""
    _table(tmp_path / "kallsyms", 1000)
    first = Kallsyms(str(tmp_path / "kallsyms"), cache_dir=tmp_path / "cache")
    assert first.name(0xFFFF0000 + 16 * 7 + 3) == "fn7"
    (kept,) = (tmp_path / "cache").glob("kallsyms-*.bin")
    assert kept.stat().st_mode & 0o777 == 0o600
    (tmp_path / "kallsyms").write_text("")  # from now on only the kept copy knows
    again = Kallsyms(str(tmp_path / "kallsyms"), cache_dir=tmp_path / "cache")
    assert [again.name(0xFFFF0000 + 16 * i) for i in (0, 999)] == ["fn0", "fn999"]
    kept.write_bytes(kept.read_bytes()[:-3])  # truncated: not trusted
    _table(tmp_path / "kallsyms", 10)
    third = Kallsyms(str(tmp_path / "kallsyms"), cache_dir=tmp_path / "cache")
    assert third.name(0xFFFF0000 + 16 * 999) == "fn9"  # read from the file again
