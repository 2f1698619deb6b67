"""One writer per run folder: a lock file that a second `train` into the same folder finds taken.

The lock is an advisory `flock` on RUN/.lock, which the operating system releases when the holding
process ends in any way, `kill -9` included: a lock left by a killed process is simply free, and
the next writer takes it over (and removes the temporary files of a write it was killed in). The
file keeps the holder's pid and host for the message. Under torchrun rank 0 alone writes, so it
alone holds the lock, and every rank learns whether it got it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from cnnlab.training import distributed
from cnnlab.errors import RunError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

LOCK_NAME = ".lock"


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:
        return False
    return True


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").split()
    except OSError:
        return "another process"
    return f"process {text[0]} on {text[1]}" if len(text) >= 2 else "another process"


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold the run folder's lock for the block; refuse with RunError if another process holds it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunError(f"cannot write in the run folder {folder}: {exc.strerror or exc}") from exc
    try:
        if not _try_lock(fd):
            raise RunError(
                f"{folder} is being written by {_holder(path)}: one run folder takes one writer at a time. "
                f"Wait for it to finish, or choose another --out"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays, harmless, for the next writer


def is_held(folder: str | Path) -> bool:
    """Whether a process holds the run folder's lock now (training is writing it), for the web page.

    The test takes a shared lock for an instant: a trainer starting in that same instant would be refused
    as if a second writer were there, which is why the page asks only about runs with no metrics.json."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False  # no lock file: nothing ever trained into the folder, or it cannot be read
    try:
        if fcntl is None:
            return False  # Windows: msvcrt's byte locks cannot be tested without taking them
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def hold_run_folder(folder: Path, held: ExitStack, ctx: distributed.Context,
                    then: Callable[[], None] | None = None) -> None:
    """Rank 0 takes the run folder's lock until `held` closes, removes what a killed writer left
    half-written, then runs the check `then`; should either fail, every rank raises its RunError
    (the others would otherwise wait for rank 0 forever)."""
    problem = None
    if ctx.is_main:
        try:
            held.enter_context(run_lock(folder))
            for tmp in folder.glob(".*.tmp"):  # runs.atomic_write's temporary files: never a whole file
                tmp.unlink(missing_ok=True)
            if then is not None:
                then()
        except RunError as exc:
            problem = str(exc)
    problem = distributed.from_main(problem, ctx)
    if problem is not None:
        raise RunError(problem)
