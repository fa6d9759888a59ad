"""tests/data: the torture corpora are the RFCs' bytes, and what we derived is
exactly what tests/data/README.md says it is."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
CORPORA = ("rfc4475", "rfc5118")


def sums(folder: Path) -> dict[str, str]:
    out = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        out[name] = digest
    return out


def tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("corpus", CORPORA)
def test_every_file_matches_its_checksum(corpus: str) -> None:
    folder = DATA / corpus
    listed = sums(folder)
    on_disk = {str(p.relative_to(folder)) for p in folder.rglob("*.dat")}
    assert set(listed) == on_disk
    wrong = [name for name, digest in listed.items()
             if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest]
    assert not wrong, f"changed since the checksums were taken: {wrong}"


def test_corpus_sizes() -> None:
    assert len(list((DATA / "rfc4475").glob("*.dat"))) == 50
    assert len(list((DATA / "rfc5118").glob("*.dat"))) == 12
    assert len(list((DATA / "rfc5118" / "wire").glob("*.dat"))) == 12


def wire_copy(archived: bytes) -> bytes:
    """The transformation tests/data/README.md describes for rfc5118/wire/."""
    head, blank, body = archived.partition(b"\n\n")
    if not blank:
        head, body = archived.rstrip(b"\n"), b""
    head, body = head.replace(b"\n", b"\r\n"), body.replace(b"\n", b"\r\n")
    head = re.sub(rb"(?im)^((?:content-length|l)[ \t]*:[ \t]*)\d+",
                  lambda m: m.group(1) + str(len(body)).encode(), head)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "rfc5118").glob("*.dat")))
def test_wire_copy_is_the_documented_derivation(name: str) -> None:
    archived = (DATA / "rfc5118" / name).read_bytes()
    assert b"\r" not in archived, "the archived RFC 5118 files use bare LF"
    assert (DATA / "rfc5118" / "wire" / name).read_bytes() == wire_copy(archived)


@pytest.mark.parametrize("corpus", CORPORA)
def test_expected_tsv_has_one_row_per_message(corpus: str) -> None:
    names = [row["name"] for row in tsv(DATA / corpus / "expected.tsv")]
    assert len(names) == len(set(names))
    assert set(names) == {p.stem for p in (DATA / corpus).glob("*.dat")}


def test_choices_name_real_files_and_say_why() -> None:
    rows = tsv(DATA / "choices.tsv")
    assert rows
    for row in rows:
        corpus, name = row["file"].split("/")
        assert (DATA / corpus / f"{name}.dat").is_file(), row
        assert row["parser"] == "parses" or row["parser"].isdigit(), row
        assert row["proxy"] == "none" or row["proxy"].isdigit(), row
        assert row["rfc_allows"] and row["why"], row
