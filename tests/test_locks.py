"""zsw.locks: exclusive advisory locks on outputs (what the commands' tests rely on, piece by piece)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from zsw.locks import OutputBusyError, lock_file, lock_folder, try_lock_folder, wait_folder

HOLD = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], {flags}); fcntl.flock(fd, fcntl.LOCK_EX); print(1, flush=True); time.sleep(60)"  # noqa: E501


def _holder(path, flags: str = "os.O_RDONLY") -> subprocess.Popen:
    args = [sys.executable, "-c", HOLD.format(flags=flags), str(path)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "1"
    return proc


def test_a_folder_another_process_holds_is_refused_naming_it_until_that_process_dies(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    proc = _holder(run)
    try:
        with pytest.raises(OutputBusyError) as e:
            lock_folder(run, "--out")
        assert str(e.value).startswith(f"another process is writing to {run} (pid {proc.pid}: -c import fcntl")
        assert str(e.value).endswith("...); stop it or choose another --out") and "\n" not in str(e.value)
        assert try_lock_folder(run) is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with lock_folder(run) as lock:  # a killed holder holds nothing
        assert lock.held and run.is_dir()
    assert run.is_dir()  # not made by the lock: kept


def test_a_lock_makes_its_folder_and_removes_it_again_while_empty(tmp_path):
    with lock_folder(tmp_path / "new" / "run"):
        assert (tmp_path / "new" / "run").is_dir()
    assert not (tmp_path / "new").exists()  # a start that fails leaves nothing
    with lock_folder(tmp_path / "new" / "run"):
        (tmp_path / "new" / "run" / "config.yaml").write_text("x")
    assert (tmp_path / "new" / "run" / "config.yaml").is_file()


def _error_of(call, seconds: float = 30.0) -> OSError:
    """The OSError ``call()`` raises, failing the test if it is still running after ``seconds``."""
    errors = []

    def attempt():
        try:
            call()
        except OSError as e:
            errors.append(e)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still trying after {seconds:g} s"
    assert len(errors) == 1, "no OSError"
    return errors[0]


@pytest.mark.parametrize("where", ["link", "proc"])
def test_a_folder_that_cannot_be_made_is_an_error_not_a_loop(tmp_path, where):
    """A folder under a link to nowhere (an unmounted drive's) or in /proc, where mkdir says "no
    such file" although the parent is there: the retry for a parent removed meanwhile once spun on
    it for ever (`zsw reconstruct -o /proc/x`, `zsw train --out drive/run`); now it is one error
    naming the path, for a run folder and a single output file alike."""
    if where == "proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc on this system")
    (tmp_path / "drive").symlink_to(tmp_path / "unmounted" / "drive")
    if where == "link":
        top, culprit, why = tmp_path / "drive", tmp_path / "drive", "a link to a folder that does not exist"
    else:
        top, culprit, why = Path("/proc/zsw-test"), Path("/proc/zsw-test"), "cannot make a folder there (No such"
    for error in (_error_of(lambda: try_lock_folder(top / "out")), _error_of(lambda: lock_file(top / "scores.json"))):
        assert str(error).startswith(f"[Errno 2] {why}") and error.filename == str(culprit), (error, error.filename)


def test_a_single_file_is_locked_beside_it_and_a_killed_holders_lock_file_is_free(tmp_path):
    out = tmp_path / "results.json"
    with lock_file(out):
        assert (tmp_path / ".results.json.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputBusyError, match=f"writing to {out} \\(pid {os.getpid()}"):
            lock_file(out)
        with lock_file(tmp_path / "other.json"):  # another file of the folder: not held up
            pass
    assert not any(tmp_path.iterdir())
    (tmp_path / ".results.json.lock").write_text("99999999\n")  # left by a killed run
    with lock_file(out):
        pass
    proc = _holder(tmp_path / ".results.json.lock", "os.O_RDWR | os.O_CREAT")
    try:
        with pytest.raises(OutputBusyError, match=f"\\(pid {proc.pid}: -c import"):
            lock_file(out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_waiter_takes_the_folder_its_holder_removed_and_made_again(tmp_path):
    folder = tmp_path / "a"
    first = lock_folder(folder)  # made by the lock: removed on release while empty
    woke = []
    waiter = threading.Thread(target=lambda: (wait_folder(folder), woke.append(time.monotonic())))
    waiter.start()
    time.sleep(0.2)
    assert not woke
    first.release()
    waiter.join(5)
    assert woke and not folder.exists()
    second = try_lock_folder(folder)  # made again: a fresh inode, lockable
    assert second is not None and try_lock_folder(folder) is None
    second.release()
