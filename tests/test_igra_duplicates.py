"""The same soundings given twice (issue 12, item 10): identical copies are dropped with
a warning naming the files; copies that disagree are an error naming both files and the
sounding's header line."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import shared_file
from scorebridge.cli import main
from scorebridge.data.igra.ingest import ingest, open_igra
from scorebridge.errors import InputError

EXCERPT = ("igra", "USM00074794-data-exampleportion.txt")


@pytest.fixture
def copies(tmp_path):
    """The real excerpt (CRLF) and an LF copy of it under another name."""
    raw = shared_file(*EXCERPT).read_bytes()
    crlf = tmp_path / "USM00074794-data.txt"
    lf = tmp_path / "USM00074794-data-copy.txt"
    crlf.write_bytes(raw)
    lf.write_bytes(raw.replace(b"\r\n", b"\n"))
    return crlf, lf


def test_identical_copies_are_dropped_with_a_warning(tmp_path, copies, caplog):
    crlf, lf = copies
    out = tmp_path / "igra.zarr"
    with caplog.at_level(logging.WARNING, logger="scorebridge.data.igra"):
        summary = ingest({"source": "local", "pressure_range": None}, [crlf, lf], out)
    obs, snd = open_igra(out)
    assert snd.sizes["sounding"] == 14 and obs.sizes["obs"] == 153
    assert summary["soundings"] == 14 and summary["soundings_read"] == 28 and summary["duplicates_dropped"] == 14
    warned = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("scorebridge")
    ]
    assert len(warned) == 1 and str(crlf) in warned[0] and str(lf) in warned[0] and "14 " in warned[0]
    prov = json.loads(obs.attrs["provenance"])
    assert prov["summary"]["duplicates_dropped"] == 14
    assert prov["duplicates"] == [{"kept": str(crlf), "dropped": str(lf), "soundings": 14}]


def test_duplicates_inside_one_file_and_a_file_given_twice(tmp_path, copies, caplog):
    crlf, _ = copies
    doubled = tmp_path / "USM00074794-data-doubled.txt"
    doubled.write_bytes(crlf.read_bytes() * 2)
    with caplog.at_level(logging.WARNING, logger="scorebridge.data.igra"):
        summary = ingest({"source": "local"}, [doubled], tmp_path / "a.zarr")
    assert summary["soundings"] == 14 and summary["duplicates_dropped"] == 14
    assert str(doubled) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scorebridge.data.igra"):
        summary = ingest({"source": "local"}, [crlf, crlf], tmp_path / "b.zarr")
    assert summary["soundings"] == 14 and "given twice" in caplog.text


def test_conflicting_copies_are_an_error(tmp_path, copies):
    crlf, lf = copies
    lines = lf.read_bytes().split(b"\n")
    assert lines[11].startswith(b"#USM00074794 1950 02 05 05")  # the second sounding: header at line 12
    line = bytearray(lines[13])  # its second level (line 14): "10 -9999 100000   208B  188B..."
    assert line[22:27] == b"  188"
    line[22:27] = b"  -12"  # TEMP -1.2 °C instead of 18.8 °C
    lines[13] = bytes(line)
    lf.write_bytes(b"\n".join(lines))
    out = tmp_path / "igra.zarr"
    with pytest.raises(InputError) as err:
        ingest({"source": "local"}, [crlf, lf], out)
    msg = str(err.value)
    assert f"{crlf}, line 12" in msg and f"{lf}, line 12" in msg
    assert "USM00074794" in msg and "1950-02-05T05:00" in msg
    assert not out.exists()
    # a different number of levels is a conflict too, and the CLI says so without a traceback
    lines = crlf.read_bytes().replace(b"\r\n", b"\n").split(b"\n")
    header = lines[11]
    lines[11] = header[:32] + b"   8" + header[36:]
    del lines[12]
    lf.write_bytes(b"\n".join(lines))
    rc = main(["igra-ingest", "--spec", '{"source": "local"}', "--out", str(out), str(crlf), str(lf)])
    assert rc == 1 and not out.exists()


def test_cli_names_files_in_the_warning(tmp_path, copies, capsys):
    crlf, lf = copies
    out = tmp_path / "igra.zarr"
    assert main(["igra-ingest", "--spec", '{"source": "local"}', "--out", str(out), str(crlf), str(lf)]) == 0
    _, snd = open_igra(out)
    assert snd.sizes["sounding"] == 14
