"""Windows (NTFS + console) semantics emulated on Linux, for tests: the implementation behind ``winemu``.

Loaded in two ways: ``winemu.enabled()`` installs it in the test process, and ``sitecustomize.py`` (its
folder first on ``PYTHONPATH``, ``AIPC_WINEMU=1``) installs it in every Python process the test starts,
DVC's stage subprocesses included. The module name is unusual on purpose: it is imported at top level
there and must not shadow anything.

What is emulated, where it matters for the pipeline:

* **Read-only files** (no owner write bit; DVC's cache files and their hard links): ``os.unlink``/``os.remove``
  refuse them, and ``os.replace``/``os.rename`` refuse to replace one (``PermissionError``, WinError 5).
  Opening one for writing is refused too (as root, Linux would allow it).
* **Open or mapped files** (any fd in ``/proc/<pid>/fd`` or mapping in ``/proc/<pid>/maps``, so OpenVINO's
  C++ ``mmap`` of ``.bin`` files is seen as well as Python's): a folder holding one cannot be renamed
  (WinError 5), a file open in this process cannot be deleted, renamed or replaced (WinError 32). For
  folder renames every process of the same emulated project is checked (the DVC parent, stages,
  workers); for files, this process only (``rmtree`` deletes thousands).
* **Rename semantics**: ``os.rename`` onto an existing path fails (WinError 183); ``os.replace`` of a folder
  onto an existing folder fails (WinError 5).
* **MAX_PATH**: every path created (``os.open`` with ``O_CREAT``, ``open`` for writing, ``os.mkdir``,
  rename/replace/link destinations) is mapped to a realistic Windows path (``AIPC_WINEMU_ROOT`` ->
  ``C:\\Users\\<20 chars>\\source\\repos\\aipc-pipeline``, the temp folder -> ``...\\AppData\\Local\\Temp``,
  ``HOME`` -> ``C:\\Users\\<20 chars>``) and its characters counted: files over 259, folders over 247
  (``CreateDirectory`` keeps 12 for an 8.3 name) are violations.
* **Encodings**: stdout/stderr/stdin are cp1252 with ``errors="strict"`` (a redirected Windows console), and
  ``open()`` in text mode without an encoding reads and writes cp1252 (the ANSI code page), unless
  ``PYTHONUTF8=1`` or ``PYTHONIOENCODING`` is set, as on Windows.
* Optionally (``AIPC_WINEMU_NOSYMLINK=1``) ``os.symlink`` fails as without Developer Mode (WinError 1314).

Environment: ``AIPC_WINEMU=1`` switches it on (sitecustomize only); ``AIPC_WINEMU_ROOT`` is the real
project root; ``AIPC_WINEMU_RECORD`` names a JSON-lines file where every refusal and every long path is
appended; ``AIPC_WINEMU_STRICT=0`` only records long paths instead of raising (the other refusals always
raise: they are the behaviour); ``AIPC_WINEMU_ENCODING=0`` leaves encodings alone.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import stat
import sys
import tempfile
import traceback

WIN_USER = "alexandra.richardson"  # 20 characters, a realistic corporate user name
WIN_HOME = "C:\\Users\\" + WIN_USER
WIN_ROOT = WIN_HOME + "\\source\\repos\\aipc-pipeline"
WIN_TEMP = WIN_HOME + "\\AppData\\Local\\Temp"
MAX_FILE = 259  # MAX_PATH (260) less the terminating NUL
MAX_DIR = 247  # CreateDirectory: MAX_PATH less 12 (room for an 8.3 file name) less the NUL

_real: dict[str, object] = {}  # name -> original function, while installed
_settings: dict[str, object] = {}


# ----------------------------------------------------------------------------------------------- recording

def _record(kind: str, path: str, **extra: object) -> None:
    """Append one refusal or long path to the record file (if any), with the caller's frames."""
    target = _settings.get("record")
    if not target:
        return
    frames = [f"{os.path.relpath(f.filename, _settings['root']) if f.filename.startswith(str(_settings['root'])) else f.filename}"
              f":{f.lineno} {f.name}" for f in traceback.extract_stack()[:-3]
              if "_aipc_winemu" not in f.filename and "<frozen" not in f.filename]
    entry = {"kind": kind, "path": str(path), "pid": os.getpid(), "argv": sys.argv[:3], **extra,
             "stack": frames[-8:]}
    line = json.dumps(entry, default=str) + "\n"
    fd = _real["os.open"](target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # type: ignore[operator]
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


def _deny(kind: str, path: object, winerror: int, message: str, exc: type[OSError] = PermissionError,
          errno_: int = 13, **extra: object) -> OSError:
    _record(kind, os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path), **extra)
    return exc(errno_, f"[WinError {winerror}] {message} (emulated Windows semantics: {kind})", os.fsdecode(path)
               if isinstance(path, (str, bytes, os.PathLike)) else str(path))


# ------------------------------------------------------------------------------------------- path helpers

def _abs(path: object, dir_fd: int | None = None) -> str:
    """Absolute form of ``path`` (no symlink resolution), honouring ``dir_fd``."""
    if isinstance(path, int):
        return os.readlink(f"/proc/self/fd/{path}")
    path = os.fsdecode(path)  # type: ignore[arg-type]
    if dir_fd is not None and not os.path.isabs(path):
        return os.path.normpath(os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path))
    return os.path.abspath(path)


def windows_path(path: str) -> str | None:
    """The path ``path`` would have on the emulated Windows laptop, or None if it maps to nowhere known."""
    for prefix, win in _settings.get("prefixes", ()):  # type: ignore[union-attr]
        if path == prefix or path.startswith(prefix + "/"):
            return win + path[len(prefix):].replace("/", "\\")
    return None


VENV_LAYOUT = (("/lib/python{}.{}/site-packages/".format(*sys.version_info[:2]), "\\Lib\\site-packages\\"),
               ("/bin/", "\\Scripts\\"), ("/include/python{}.{}/".format(*sys.version_info[:2]), "\\Include\\"))


def tree_overflows(folder: str, windows_folder: str, limit: int = MAX_FILE) -> list[tuple[int, str]]:
    """(length, Windows path) of every file under ``folder`` over ``limit`` if it lived at ``windows_folder``.

    A venv's POSIX layout is translated (``lib/pythonX.Y/site-packages`` -> ``Lib\\site-packages``,
    ``bin`` -> ``Scripts``), so an installed environment can be measured as Windows would hold it.
    """
    found = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            rel = "/" + os.path.relpath(os.path.join(dirpath, name), folder)
            for posix, win in VENV_LAYOUT:
                if rel.startswith(posix):
                    rel = win + rel[len(posix):]
                    break
            win_path = windows_folder.rstrip("\\") + rel.replace("/", "\\")
            if len(win_path) > limit:
                found.append((len(win_path), win_path))
    return sorted(found, reverse=True)


def _check_length(path: object, is_dir: bool, dir_fd: int | None = None) -> None:
    """Record or refuse a created path longer than Windows allows without long-path support."""
    if not _settings.get("prefixes"):
        return
    real = _abs(path, dir_fd)
    win = windows_path(real)
    limit = MAX_DIR if is_dir else MAX_FILE
    if win is None or len(win) <= limit:
        return
    _record("long-path", real, windows=win, length=len(win), limit=limit, strict=_settings["strict"])
    if _settings["strict"]:
        raise FileNotFoundError(2, f"[WinError 206] The filename or extension is too long ({len(win)} characters > "
                                   f"{limit} as {win}; emulated Windows semantics: long-path)", real)


def _is_readonly(path: object, dir_fd: int | None = None) -> bool:
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)  # type: ignore[arg-type]
    except OSError:
        return False
    return not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode) and not st.st_mode & stat.S_IWUSR


def _identity(path: object, dir_fd: int | None = None) -> tuple[int, int] | None:
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)  # type: ignore[arg-type]
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _parse_maps(pid: str) -> tuple[set[tuple[int, int]], set[str]]:
    """(device, inode) pairs and paths of the files process ``pid`` has mapped."""
    ids, paths = set(), set()
    try:
        with _real["io.open"](f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:  # type: ignore[operator]
            for line in f:
                parts = line.split(None, 5)
                if len(parts) < 6 or not parts[5].startswith("/"):
                    continue
                major, minor = (int(x, 16) for x in parts[3].split(":"))
                ids.add((os.makedev(major, minor), int(parts[4])))
                paths.add(parts[5].rstrip("\n").removesuffix(" (deleted)"))
    except OSError:
        pass
    return ids, paths


def _open_files(pid: str = "self") -> tuple[set[tuple[int, int]], set[str]]:
    """(device, inode) pairs and paths of the regular files process ``pid`` holds open or mapped."""
    ids, paths = _parse_maps(pid)
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return ids, paths
    for fd in fds:
        link = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(link)
            st = os.stat(link)
        except OSError:
            continue
        if target.startswith("/") and stat.S_ISREG(st.st_mode):
            ids.add((st.st_dev, st.st_ino))
            paths.add(target)
    return ids, paths


def _project_pids() -> list[str]:
    """This process and every other process of the same emulated project (same AIPC_WINEMU_ROOT)."""
    marker = f"AIPC_WINEMU_ROOT={_settings['root']}".encode()
    pids = ["self"]
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with _real["io.open"](f"/proc/{pid}/environ", "rb") as f:  # type: ignore[operator]
                if marker in f.read().split(b"\0"):
                    pids.append(pid)
        except OSError:
            continue
    return pids


def _open_inside(folder: str) -> str | None:
    """A file inside ``folder`` that some process of this project holds open or mapped, if any."""
    for pid in _project_pids():
        _, paths = _open_files(pid)
        for p in paths:
            if p.startswith(folder + "/"):
                return f"{p} (pid {os.getpid() if pid == 'self' else pid})"
    return None


def _file_in_use(path: object, dir_fd: int | None = None) -> bool:
    ident = _identity(path, dir_fd)
    return ident is not None and ident in _open_files()[0]


# ------------------------------------------------------------------------------------------------ wrappers

def _unlink(path, *, dir_fd=None):
    if _is_readonly(path, dir_fd):
        raise _deny("delete-readonly", _abs(path, dir_fd), 5, "Access is denied")
    if _file_in_use(path, dir_fd):
        raise _deny("delete-open-file", _abs(path, dir_fd), 32,
                    "The process cannot access the file because it is being used by another process")
    return _real["os.unlink"](path, dir_fd=dir_fd)


def _check_move(src, dst, src_dir_fd, dst_dir_fd, replace: bool) -> None:
    src_abs, dst_abs = _abs(src, src_dir_fd), _abs(dst, dst_dir_fd)
    try:
        src_st = os.stat(src, dir_fd=src_dir_fd, follow_symlinks=False)
    except OSError:
        return  # the real call reports it
    dst_exists = os.path.lexists(dst_abs)
    if dst_exists and not replace:
        raise _deny("rename-onto-existing", dst_abs, 183, "Cannot create a file when that file already exists",
                    FileExistsError, 17, source=src_abs)
    if stat.S_ISDIR(src_st.st_mode):
        if dst_exists and os.path.isdir(dst_abs):
            raise _deny("replace-folder-onto-folder", dst_abs, 5, "Access is denied", source=src_abs)
        holder = _open_inside(os.path.realpath(src_abs))
        if holder:
            raise _deny("rename-folder-with-open-file", src_abs, 5, "Access is denied", destination=dst_abs,
                        open_file=holder)
    else:
        if _identity(src, src_dir_fd) in _open_files()[0]:
            raise _deny("rename-open-file", src_abs, 32,
                        "The process cannot access the file because it is being used by another process")
    if dst_exists and _is_readonly(dst_abs):
        raise _deny("replace-readonly", dst_abs, 5, "Access is denied", source=src_abs)
    if dst_exists and _file_in_use(dst_abs):
        raise _deny("replace-open-file", dst_abs, 32,
                    "The process cannot access the file because it is being used by another process")
    _check_length(dst_abs, stat.S_ISDIR(src_st.st_mode))


def _rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
    _check_move(src, dst, src_dir_fd, dst_dir_fd, replace=False)
    return _real["os.rename"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)


def _replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
    _check_move(src, dst, src_dir_fd, dst_dir_fd, replace=True)
    return _real["os.replace"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)


def _mkdir(path, mode=0o777, *, dir_fd=None):
    _check_length(path, True, dir_fd)
    return _real["os.mkdir"](path, mode, dir_fd=dir_fd)


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


def _os_open(path, flags, mode=0o777, *, dir_fd=None):
    if flags & os.O_CREAT and not os.path.lexists(_abs(path, dir_fd)):
        _check_length(path, False, dir_fd)
    if flags & _WRITE_FLAGS and _is_readonly(path, dir_fd):
        raise _deny("write-readonly", _abs(path, dir_fd), 5, "Access is denied")
    return _real["os.open"](path, flags, mode, dir_fd=dir_fd)


def _link(src, dst, *, src_dir_fd=None, dst_dir_fd=None, follow_symlinks=True):
    _check_length(dst, False, dst_dir_fd)
    return _real["os.link"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=follow_symlinks)


def _symlink(src, dst, target_is_directory=False, *, dir_fd=None):
    if _settings.get("nosymlink"):
        raise _deny("symlink", dst, 1314, "A required privilege is not held by the client", OSError, 1)
    return _real["os.symlink"](src, dst, target_is_directory, dir_fd=dir_fd)


def _open_common(real, file, mode="r", buffering=-1, encoding=None, *args, **kwargs):
    if not isinstance(file, int) and any(c in mode for c in "wax+"):
        if not os.path.lexists(os.fsdecode(file)):
            _check_length(file, False)
        elif any(c in mode for c in "wa+") and _is_readonly(file):
            raise _deny("write-readonly", _abs(file), 5, "Access is denied")
    if "b" not in mode and encoding in (None, "locale") and _settings.get("encoding"):
        encoding = "cp1252"
    return real(file, mode, buffering, encoding, *args, **kwargs)


def _builtin_open(file, mode="r", buffering=-1, encoding=None, *args, **kwargs):
    return _open_common(_real["builtins.open"], file, mode, buffering, encoding, *args, **kwargs)


def _io_open(file, mode="r", buffering=-1, encoding=None, *args, **kwargs):
    return _open_common(_real["io.open"], file, mode, buffering, encoding, *args, **kwargs)


# ----------------------------------------------------------------------------------------------- install

_PATCHES = {
    "os.unlink": _unlink, "os.remove": _unlink, "os.rename": _rename, "os.replace": _replace,
    "os.mkdir": _mkdir, "os.open": _os_open, "os.link": _link, "os.symlink": _symlink,
    "builtins.open": _builtin_open, "io.open": _io_open,
}
_MODULES = {"os": os, "builtins": builtins, "io": io}


def _prefixes(root: str | None) -> list[tuple[str, str]]:
    pairs = []
    # The folder holding the running venv is the user's clone too (``.venv``, ``.aipc/envs`` beside it).
    extra = [p for p in os.environ.get("AIPC_WINEMU_ALSO_ROOT", "").split(os.pathsep) if p]
    for real in ([root] if root else []) + extra:
        pairs.append((os.path.realpath(real).rstrip("/"), WIN_ROOT))
        pairs.append((os.path.abspath(real).rstrip("/"), WIN_ROOT))
    pairs.append((os.path.realpath(tempfile.gettempdir()), WIN_TEMP))
    if os.environ.get("HOME"):
        pairs.append((os.path.realpath(os.environ["HOME"]), WIN_HOME))
    return sorted(set(pairs), key=lambda p: -len(p[0]))  # the longest (most specific) prefix first


def _reconfigure_streams() -> None:
    if os.environ.get("PYTHONIOENCODING") or sys.flags.utf8_mode:
        return
    for stream in (sys.stdout, sys.stderr, sys.stdin):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(encoding="cp1252", errors="strict" if stream is not sys.stderr else
                                   "backslashreplace")
            except (OSError, ValueError):
                pass


def install(root: str | None = None, record: str | None = None, strict: bool | None = None,
            encoding: bool | None = None, streams: bool = True) -> None:
    """Patch ``os``, ``io`` and ``builtins`` for Windows semantics (arguments default to the environment).

    stderr keeps ``backslashreplace``, as CPython's own stderr does on Windows.
    """
    env = os.environ
    root = root or env.get("AIPC_WINEMU_ROOT")
    _settings.update(
        root=os.path.abspath(root) if root else "",
        record=record or env.get("AIPC_WINEMU_RECORD") or "",
        strict=(env.get("AIPC_WINEMU_STRICT", "1") != "0") if strict is None else strict,
        encoding=(env.get("AIPC_WINEMU_ENCODING", "1") != "0" and not sys.flags.utf8_mode)
        if encoding is None else encoding,
        nosymlink=env.get("AIPC_WINEMU_NOSYMLINK") == "1",
        prefixes=_prefixes(root),
    )
    if _real:
        return
    for name, func in _PATCHES.items():
        module, attr = name.split(".")
        _real[name] = getattr(_MODULES[module], attr)
        setattr(_MODULES[module], attr, func)
    import shutil
    # Windows' rmtree walks by path (os.scandir + os.unlink + os.rmdir); the fd-based walk is POSIX-only.
    _real["shutil._use_fd_functions"] = shutil._use_fd_functions  # type: ignore[attr-defined]
    shutil._use_fd_functions = False  # type: ignore[attr-defined]
    if streams and _settings["encoding"]:
        _reconfigure_streams()


def uninstall() -> None:
    """Put the original functions back (the stream encodings stay as they are)."""
    import shutil
    for name, func in list(_real.items()):
        module, attr = name.split(".")
        setattr(shutil if module == "shutil" else _MODULES[module], attr, func)
    _real.clear()
