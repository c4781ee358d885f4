"""Writing files safely: atomic replace, no silent overwrite, sanitized names."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import ConceptKitError, InputError


@contextlib.contextmanager
def guarded(path: Path, doing: str, fix: str = "check that it exists, that you may use it, and that the disk "
                                               "has free space"):
    """Every file-system call outside the atomic writer runs in this: an OSError becomes one line that names the
    path, what was being done, the system's reason and the fix (never a traceback from deep inside)."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise ConceptKitError(f"could not {doing} {path} ({reason}); {fix}.") from None


def make_folder(path: Path) -> Path:
    """`path` as a folder (made with its parents if missing); a clear error if a file stands there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file, not a folder; move it away or choose another folder.")
    with guarded(path, "create the folder"):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: float, busy: Callable[[int | None], Exception]):
    """Hold the lock file `path` for the block: exclusive at the file-system level (flock; on Windows a locked
    byte), so of any number of processes exactly one is inside, and the lock of a process that died is released
    by the system itself (its file, left behind, is simply locked again). The holder writes its pid in the file
    (for messages) and removes the file before it lets go; a waiter that then gets the lock of a removed file
    opens the path again. Waits up to `wait` seconds, then raises busy(holder pid)."""
    path = Path(path)
    deadline = time.monotonic() + wait
    while True:
        with guarded(path, "open the lock file"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while not _try_lock(fd):
                if time.monotonic() >= deadline:
                    raise busy(_lock_holder(path))
                time.sleep(0.02)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the lock of a file its holder removed: try the path again
    try:
        with guarded(path, "write the lock file"):
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # releases the lock


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        raise ConceptKitError(f"the file system does not support locks here ({e.strerror}); keep the folder on a "
                              "local disk.") from None


def _lock_holder(path: Path) -> int | None:
    try:
        return int(Path(path).read_text().strip() or "x")
    except (OSError, ValueError):
        return None


IF_EXISTS = ("counter", "error", "overwrite")  # what a write does when its name is taken
COUNTER_DIGITS, MAX_COUNTER = 5, 99_999  # NAME_00002.safetensors, as ComfyUI's save nodes count


def _umask_mode(base: int = 0o666) -> int:
    """`base` as the process's umask allows: files written here get the permissions any other file would."""
    try:  # Linux says it without changing it (changing it, even for a moment, races other threads)
        status = Path("/proc/self/status").read_text()
        current = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        current = os.umask(0)
        os.umask(current)
    return base & ~current


KEEPS_SUFFIX = (".safetensors", ".png", ".json")


def counted(path: Path, number: int) -> Path:
    """NAME_0000N.ext beside NAME.ext (number 1 is the name itself); folders get the counter at the end."""
    path = Path(path)
    if number == 1:
        return path
    suffix = path.suffix if path.suffix in KEEPS_SUFFIX else ""
    return path.with_name(f"{path.name[:len(path.name) - len(suffix)]}_{number:0{COUNTER_DIGITS}d}{suffix}")


def _check_if_exists(if_exists: str) -> None:
    if if_exists not in IF_EXISTS:
        raise InputError(f"if_exists '{if_exists}' is not one of {', '.join(IF_EXISTS)}.")


def _claim(source: str, target: Path) -> bool:
    """Move `source` to `target` unless `target` exists, atomically; False when it exists."""
    try:
        if Path(source).is_dir():
            os.mkdir(target)  # exclusive; an empty folder is then replaced by the finished one
            os.replace(source, target)
        else:
            os.link(source, target)
            os.unlink(source)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if Path(source).is_dir() or e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
    try:  # a file system without hard links: claim the name exclusively, then move over the claim
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    os.replace(source, target)
    return True


def _place(tmp: str, path: Path, if_exists: str) -> Path:
    """Move the finished temporary file to `path`. Without overwriting, the move is exclusive at the file-system
    level (a hard link fails when the name exists): of two writers of one name, exactly one gets it."""
    if if_exists == "overwrite":
        if Path(tmp).is_dir() and path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name[:100]}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "previous")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        return path
    for number in range(1, MAX_COUNTER + 1 if if_exists == "counter" else 2):
        target = counted(path, number)
        if _claim(tmp, target):
            return target
    if if_exists == "counter":
        raise InputError(f"{path}: every counted name up to {MAX_COUNTER} is taken; choose another name.")
    raise InputError(f"{path} already exists; choose another name, or let the node add a counter or overwrite.")


STALE_TEMPORARY_SECONDS = 3600  # a temporary file of a write this old was left by a killed process


def _sweep_stale_temporaries(path: Path) -> None:
    """Remove what a killed earlier write of the same name left (its temporary file, an hour old or more)."""
    now = time.time()
    for leftover in path.parent.glob(f".{glob.escape(path.name[:100])}.*.tmp"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()


def atomic_write(path: Path, write: Callable[[BinaryIO], None], if_exists: str = "error") -> Path:
    """Write through a temporary file in the same folder and move it into place, so a crash or a full disk
    never leaves a half-written file under the real name. `if_exists`: "error" refuses a taken name, "counter"
    writes NAME_00002 (and on), "overwrite" replaces it. Returns the path written."""
    path = Path(path)
    _check_if_exists(if_exists)
    if if_exists == "error" and path.exists():  # early, friendly; the exclusive move below decides races
        raise InputError(f"{path} already exists; choose another name, or let the node add a counter or overwrite.")
    _sweep_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ConceptKitError(f"could not write in {path.parent} ({e.strerror or e}); check that the folder exists "
                              "and that you may write there.") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        return _place(tmp, path, if_exists)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise ConceptKitError(f"could not write {path} ({e.strerror or e}); check free disk space and permissions.") \
            from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_folder(path: Path, fill: Callable[[Path], None], if_exists: str = "error") -> Path:
    """A folder filled by `fill(temporary folder)` and moved into place whole: never a half-written or empty
    folder under the real name, whatever fails. `if_exists` as for atomic_write. Returns the path written."""
    path = Path(path)
    _check_if_exists(if_exists)
    if if_exists == "error" and path.exists():
        raise InputError(f"{path} already exists; choose another name, or let the node add a counter or overwrite.")
    _sweep_stale_temporaries(path)
    try:
        tmp = tempfile.mkdtemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ConceptKitError(f"could not write in {path.parent} ({e.strerror or e}); check that the folder exists "
                              "and that you may write there.") from None
    try:
        os.chmod(tmp, _umask_mode(0o777))
        fill(Path(tmp))
        return _place(tmp, path, if_exists)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConceptKitError(f"could not write {path} ({e.strerror or e}); check free disk space and permissions.") \
            from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


MAX_NAME_LENGTH = 200  # room for a counter and a suffix within the usual 255 bytes
SAFE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_. ")


def safe_file_name(name: str, what: str = "name") -> str:
    """`name` as a plain file name: no folders, no hidden or reserved names, nothing a shell or another OS
    would trip on. Refused (not silently changed) so that users find their file under the name they gave."""
    stripped = name.strip()
    if not stripped or stripped in (".", ".."):
        raise InputError(f"the {what} is empty; give a plain file name such as 'my_dog'.")
    if "/" in stripped or "\\" in stripped or ":" in stripped:
        raise InputError(f"the {what} '{name}' contains a folder separator; give a plain file name such as "
                         f"'{stripped.replace('/', '_').replace(chr(92), '_').replace(':', '_')}'.")
    if len(stripped) > MAX_NAME_LENGTH:
        raise InputError(f"the {what} is {len(stripped)} characters long; file systems allow about 250, so use at "
                         f"most {MAX_NAME_LENGTH}.")
    bad = sorted(set(stripped) - SAFE_NAME_CHARS)
    if bad or stripped.startswith("."):
        raise InputError(f"the {what} '{name}' has characters that are not safe in file names "
                         f"({' '.join(repr(c) for c in bad) or 'a leading dot'}); use letters, digits, '-', '_' "
                         "and '.'.")
    return stripped


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str], if_exists: str = "error") -> Path:
    """A safetensors file written atomically (never half-written; a taken name per `if_exists`). Returns its path."""
    from safetensors.torch import save

    plain, storages = {}, set()
    for key, value in tensors.items():
        value = value.detach().cpu().contiguous()
        if value.untyped_storage().data_ptr() in storages:  # safetensors refuses tensors that share memory
            value = value.clone()
        storages.add(value.untyped_storage().data_ptr())
        plain[key] = value
    data = save(plain, metadata=metadata)
    return atomic_write(Path(path), lambda f: f.write(data), if_exists)
