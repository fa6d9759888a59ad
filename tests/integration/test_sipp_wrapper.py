"""The sipp wrapper the other tests lean on: a sipp that dies at start says
why in the test's failure, and no sipp outlives the test that started it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import procs
import pytest
from procs import LOCALHOST, SippProcess, sipp_dir


def test_sipp_that_dies_at_start_fails_with_what_it_printed(sipp_bin: str, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind((LOCALHOST, 0))
        port = holder.getsockname()[1]
        uas = SippProcess(sipp_dir() / "uas_answer.xml", name="uas", workdir=tmp_path,
                          local_port=port, calls=1, timeout_s=10, service="bob")
        with pytest.raises(AssertionError) as info:
            uas.wait_bound()
    message = str(info.value)
    assert message.startswith("sipp uas exited\n"), message
    assert "Unable to bind main socket" in message and "Address already in use" in message
    assert uas.proc.poll() is not None


def test_a_running_sipp_is_killed_after_its_test(sipp_bin: str, tmp_path: Path) -> None:
    uas = SippProcess(sipp_dir() / "uas_answer.xml", name="waiting", workdir=tmp_path,
                      local_port=procs.free_port(), calls=1, timeout_s=60, service="bob")
    uas.wait_bound()
    # What the autouse fixture does once a test ends, passed or failed.
    assert procs.kill_leftover_sipps() == ["waiting"]
    assert uas.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(uas.proc.pid, 0)
    assert procs.kill_leftover_sipps() == []
