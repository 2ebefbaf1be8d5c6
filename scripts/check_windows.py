"""Static check for code that works on Linux and breaks on Windows (most of our users convert on Windows laptops).

Run:      python scripts/check_windows.py    (checks pipeline/, tests/, scripts/ and bootstrap.py; exit 1 on findings)
Override: python scripts/check_windows.py pipeline/cli (any files or folders)

Rules (all from the Python AST, never from regular expressions over the text):

* ``posix-only``: calls and constants that do not exist on Windows (``os.fork``, ``os.getloadavg``,
  ``os.geteuid``, ``os.sched_*``, ``signal.SIGKILL``, ...) and imports of POSIX-only modules (``fcntl``,
  ``resource``, ``pwd``, ...).
* ``posix-path``: string literals that are POSIX system paths (``/proc/...``, ``/sys/...``, ``/dev/...``, ``/tmp``).
* ``encoding``: text-mode ``open``, ``Path.open``, ``read_text``, ``write_text``, ``NamedTemporaryFile`` and
  ``subprocess`` with ``text=True`` without an explicit encoding (Windows uses the ANSI code page, cp1252).
* ``rename``: ``os.rename`` (fails on Windows when the target exists), and renames or replaces of what looks
  like a folder (the name of the source says dir/folder/env/staging/tree): a folder with an open, mapped or
  scanned file inside cannot be renamed on Windows; use ``pipeline.core.artifacts`` helpers.
* ``rmtree-ignore``: ``shutil.rmtree(..., ignore_errors=True)`` silently leaves read-only files (DVC's cache
  files, their hard links) behind on Windows; use ``pipeline.core.artifacts.remove_tree``.
* ``venv-bin``: hard-coded ``bin`` venv paths (``Scripts`` on Windows) with no Windows branch.

A finding is guarded, and not reported, when it sits inside an ``if``/conditional expression that tests
``os.name``, ``sys.platform``, ``platform.system()`` (or follows such an ``if`` that returns, raises or calls
``pytest.skip``), inside a test function or class decorated with ``pytest.mark.skipif(<such a test>)`` (or with
a module-level name bound to one), in a test module whose ``pytestmark`` holds such a marker, inside a ``try``
whose ``except`` catches the error it raises on Windows, on a line ending in ``# windows-ok: <reason>``, or when
it is in ``ALLOWED`` below (with the reason; ``"*"`` as the rule or function covers the whole file).

``subprocess`` with ``text=True`` and no encoding is not reported when the command starts with a Python
interpreter (``sys.executable``, a ``python`` path) and ``env=`` does not mention ``PYTHONIOENCODING``,
``PYTHONUTF8`` or ``worker_env``: a Python child writes its pipes in the locale encoding, the one ``text=True``
reads (an explicit ``encoding="utf-8"`` would be wrong there on Windows).
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TARGETS = ("pipeline", "tests", "scripts", "bootstrap.py")

POSIX_OS = {
    "fork", "forkpty", "getloadavg", "geteuid", "getuid", "getegid", "getgid", "getgroups", "setsid", "setuid",
    "setgid", "killpg", "getpgid", "setpgid", "getpgrp", "mknod", "mkfifo", "statvfs", "fstatvfs", "chown",
    "lchown", "fchown", "uname", "wait3", "wait4", "nice", "getpriority", "setpriority", "sysconf", "pathconf",
    "fpathconf", "posix_fadvise", "posix_fallocate", "pipe2", "openpty", "ttyname", "ctermid", "sync",
    "getresuid", "getresgid", "memfd_create", "sendfile", "WNOHANG", "O_NOFOLLOW", "O_DIRECTORY", "O_CLOEXEC",
}
POSIX_OS_PREFIXES = ("sched_",)
POSIX_SIGNAL = {
    "SIGKILL", "SIGUSR1", "SIGUSR2", "SIGHUP", "SIGALRM", "SIGCHLD", "SIGPIPE", "SIGQUIT", "SIGSTOP", "SIGCONT",
    "SIGTSTP", "SIGWINCH", "alarm", "setitimer", "getitimer", "pause", "siginterrupt", "pthread_kill",
    "pthread_sigmask", "sigwait",
}
POSIX_MODULES = {"fcntl", "resource", "pwd", "grp", "termios", "tty", "pty", "posix", "crypt", "syslog", "spwd"}
POSIX_PATH_PREFIXES = ("/proc/", "/proc", "/sys/", "/dev/", "/tmp", "/var/tmp", "/usr/", "/etc/")
OPEN_LIKE_MODULES = {"os", "tarfile", "zipfile", "gzip", "bz2", "lzma", "webbrowser", "codecs", "wave", "shelve",
                     "dbm", "Image", "mmap", "sys", "tempfile", "ov", "openvino", "h5py", "fsspec"}
SUBPROCESS_TEXT = {"run", "check_output", "Popen", "call", "check_call"}
FOLDER_WORDS = ("dir", "folder", "env", "staging", "tree", "venv")
PLATFORM_NAMES = ("WINDOWS", "POSIX", "LINUX", "IS_NT", "ON_NT")

# Error classes whose handler makes a finding of each rule harmless (the code falls back).
GUARD_ERRORS = {
    "posix-only": {"AttributeError", "ImportError", "ModuleNotFoundError", "OSError", "NotImplementedError",
                   "Exception", "BaseException", "ValueError"},
    "posix-path": {"OSError", "FileNotFoundError", "PermissionError", "Exception", "BaseException"},
    "venv-bin": set(),
    "encoding": set(),
    "rename": set(),
    "rmtree-ignore": set(),
}

# Known exceptions: (path, rule, enclosing function) -> why it is fine on Windows.
ALLOWED: dict[tuple[str, str, str], str] = {
    ("pipeline/core/artifacts.py", "rename", "replace_dir"):
        "the one folder-rename helper; callers handle its PermissionError (Windows refuses while a file inside is open)",
    ("pipeline/core/artifacts.py", "rename", "sweep_stale"):
        "puts back a previous output moved aside by a killed run; the helper module owns folder renames",
    ("pipeline/core/memory.py", "posix-path", "MappedPageTrimmer._mappings"):
        "called only by trim() from the trimmer thread, which starts only when enabled (sys.platform linux)",
    ("pipeline/npu_lib/build.py", "posix-path", "linux_build_reason"):
        "checks Path('/proc/cpuinfo').is_file() first and assumes AVX2/F16C when absent",
    ("pipeline/npu_lib/build.py", "encoding", "linux_build_reason"):
        "reads /proc/cpuinfo (ASCII, errors='replace'), which exists only on Linux",
    ("scripts/check_windows.py", "posix-path", "<module>"): "the rules' own list of POSIX path prefixes",
    ("scripts/check_windows.py", "venv-bin", "_Checker.visit_Constant"): "the rules' own venv path patterns",
    ("scripts/check_windows.py", "venv-bin", "_Checker.visit_JoinedStr"): "the rules' own venv path patterns",
    ("scripts/make_tiny_phi3.py", "venv-bin", "static_info"):
        "records in the asset's README the command that made it (on Linux); not a path the script opens",
    ("scripts/tiny_phi3/report_128k.py", "venv-bin", "readme_info"):
        "records in the asset's README the command that made it (on Linux); not a path the script opens",
    ("tests/windows/winemu/_aipc_winemu.py", "*", "*"):
        "the Windows emulation itself, Linux-only by design (reads /proc/<pid>/fd and maps); "
        "tests/windows/test_windows_emulation.py is skipped off Linux, where the real rules apply",
    ("tests/openvino/test_lean.py", "posix-path", "test_stage_restarts_with_malloc_on_huge_pages"):
        "skipped unless memory.huge_pages_available(), which is False off Linux",
    ("tests/openvino/test_lean.py", "posix-only", "mapped_weights"):
        "helper of the Linux-only trimmer tests (each skipif not linux)",
    ("tests/openvino/test_lean.py", "posix-path", "status_kib"):
        "helper of the Linux-only trimmer tests (each skipif not linux)",
    ("tests/conftest.py", "posix-path", "mapped_rss_kb"):
        "helper of the Linux-only page-trimming tests (test_validate_memory.py, test_recipe_cost.py: skipif not linux)",
    ("tests/core/test_reliability_faults.py", "posix-path", "test_tmpdir_on_another_drive_is_moved_beside_the_output"):
        "skips itself when /dev/shm is not a folder on another file system (never a folder on Windows)",
    ("tests/core/test_reliability_faults.py", "posix-path", "test_real_int4_export_with_tmpdir_on_another_drive"):
        "skips itself when /dev/shm is not a folder on another file system (never a folder on Windows)",
    ("tests/sweep/sweep_cluster.py", "*", "local_cluster"):
        "a local multi-node Ray cluster (ray start --block, short /tmp socket paths), which Ray does not support on "
        "Windows; tests/sweep/test_ray_sweep.py is skipped there",
}


@dataclass(frozen=True)
class Finding:
    """One Windows-ism: where and what."""

    path: str
    line: int
    rule: str
    message: str
    function: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message} (in {self.function})"


def _dotted(node: ast.AST) -> str:
    """``os.path.join`` for an attribute chain, ``""`` for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


PLATFORM_EXPRESSIONS = ("os.name", "sys.platform", "platform.system", "platform.platform", "sys.getwindowsversion")


def _platform_variables(tree: ast.AST) -> set[str]:
    """Names assigned from the operating system's name (``system = platform.system()``) anywhere in the file."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                _dotted(n) in PLATFORM_EXPRESSIONS for n in ast.walk(node.value) if isinstance(n, (ast.Attribute, ast.Name))):
            found.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return found


def _is_platform_test(test: ast.AST, variables: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether an ``if`` condition looks at the operating system."""
    for node in ast.walk(test):
        name = _dotted(node) if isinstance(node, (ast.Attribute, ast.Name)) else ""
        if name in PLATFORM_EXPRESSIONS or name in variables:
            return True
        if name and any(word in name.upper() for word in PLATFORM_NAMES):
            return True
        if isinstance(node, ast.Call) and _dotted(node.func) == "hasattr":
            return True  # hasattr(os, "fork"), hasattr(signal, "SIGKILL")
    return False


EXIT_CALLS = ("pytest.skip", "pytest.fail", "pytest.exit", "sys.exit")
PYTHON_CHILD_ENV_WORDS = ("PYTHONIOENCODING", "PYTHONUTF8", "worker_env")


def _exits(body: list[ast.stmt]) -> bool:
    if body and isinstance(body[-1], ast.Expr) and isinstance(body[-1].value, ast.Call):
        return _dotted(body[-1].value.func) in EXIT_CALLS
    return bool(body) and isinstance(body[-1], (ast.Return, ast.Raise, ast.Continue, ast.Break))


def _skips_off_platform(node: ast.AST, markers: set[str], variables: set[str]) -> bool:
    """Whether ``node`` (a decorator, or a ``pytestmark`` value) is a ``pytest.mark.skipif`` on the platform."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return any(_skips_off_platform(e, markers, variables) for e in node.elts)
    if isinstance(node, ast.Name) and node.id in markers:
        return True
    if not (isinstance(node, ast.Call) and _dotted(node.func).endswith("mark.skipif")):
        return False
    condition = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "condition"), None)
    return condition is not None and _is_platform_test(condition, variables)


def _platform_markers(tree: ast.Module, variables: set[str]) -> tuple[set[str], bool]:
    """Module-level names bound to a platform ``skipif`` marker, and whether ``pytestmark`` holds one."""
    markers: set[str] = set()
    whole_module = False
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and _skips_off_platform(stmt.value, markers, variables):
            names = {t.id for t in stmt.targets if isinstance(t, ast.Name)}
            whole_module |= "pytestmark" in names
            markers |= names - {"pytestmark"}
    return markers, whole_module


def _python_child(node: ast.Call, kwargs: dict[str, ast.AST]) -> bool:
    """A subprocess call whose command starts with a Python interpreter that keeps the locale encoding."""
    command = node.args[0] if node.args else kwargs.get("args")
    if not (isinstance(command, (ast.List, ast.Tuple)) and command.elts):
        return False
    first = ast.unparse(command.elts[0])
    env = ast.unparse(kwargs["env"]) if "env" in kwargs else ""
    return ("sys.executable" in first or "python" in first.lower()) and not any(
        word in env for word in PYTHON_CHILD_ENV_WORDS)


class _Checker(ast.NodeVisitor):
    def __init__(self, rel: str, lines: list[str], platform_vars: set[str], markers: set[str] = frozenset(),
                 whole_module: bool = False) -> None:
        self.rel, self.lines, self.platform_vars, self.markers = rel, lines, platform_vars, set(markers)
        self.findings: list[Finding] = []
        self.platform_guard = int(whole_module)  # a test module skipped off its platform
        self.caught: list[set[str]] = []
        self.functions: list[str] = []
        self.function_scripts: list[bool] = []  # does the enclosing function mention "Scripts" (a Windows branch)

    # ------------------------------------------------------------------ context
    def _visit_body(self, body: list[ast.stmt]) -> None:
        guarded_after = 0
        for stmt in body:
            self.visit(stmt)
            if (isinstance(stmt, ast.If) and _is_platform_test(stmt.test, self.platform_vars) and _exits(stmt.body)
                    and not stmt.orelse and not guarded_after):
                guarded_after = 1
                self.platform_guard += 1  # the rest of this block runs only on the other platform
        self.platform_guard -= guarded_after

    def generic_visit(self, node: ast.AST) -> None:
        for _field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                self._visit_body(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    def _skipped(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
        return int(any(_skips_off_platform(d, self.markers, self.platform_vars) for d in node.decorator_list))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node.name)
        self.function_scripts.append(any(isinstance(n, ast.Constant) and n.value == "Scripts" for n in ast.walk(node)))
        skipped = self._skipped(node)
        self.platform_guard += skipped
        self.generic_visit(node)
        self.platform_guard -= skipped
        self.functions.pop()
        self.function_scripts.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.functions.append(node.name)
        skipped = self._skipped(node)
        self.platform_guard += skipped
        self.generic_visit(node)
        self.platform_guard -= skipped
        self.functions.pop()

    def visit_If(self, node: ast.If) -> None:
        guard = _is_platform_test(node.test, self.platform_vars)
        self.visit(node.test)
        self.platform_guard += guard
        self._visit_body(node.body)
        self._visit_body(node.orelse)
        self.platform_guard -= guard

    def visit_IfExp(self, node: ast.IfExp) -> None:
        guard = _is_platform_test(node.test, self.platform_vars)
        self.visit(node.test)
        self.platform_guard += guard
        self.visit(node.body)
        self.visit(node.orelse)
        self.platform_guard -= guard

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        # ``system == "Linux" and glob("/dev/...")``: what follows a platform test runs only on that platform
        guards = 0
        for value in node.values:
            self.visit(value)
            if isinstance(node.op, ast.And) and not guards and _is_platform_test(value, self.platform_vars):
                guards = 1
                self.platform_guard += 1
        self.platform_guard -= guards

    def visit_Try(self, node: ast.Try) -> None:
        names: set[str] = set()
        for handler in node.handlers:
            if handler.type is None:
                names.add("BaseException")
            for n in ast.walk(handler.type) if handler.type else ():
                if isinstance(n, (ast.Name, ast.Attribute)):
                    names.add(_dotted(n).split(".")[-1])
        self.caught.append(names)
        self._visit_body(node.body)
        self.caught.pop()
        for handler in node.handlers:
            self._visit_body(handler.body)
        self._visit_body(node.orelse)
        self._visit_body(node.finalbody)

    visit_TryStar = visit_Try

    # ------------------------------------------------------------------ reporting
    def _report(self, node: ast.AST, rule: str, message: str) -> None:
        if self.platform_guard:
            return
        if any(names & GUARD_ERRORS[rule] for names in self.caught):
            return
        first, last = node.lineno, getattr(node, "end_lineno", node.lineno) or node.lineno
        if any("# windows-ok:" in self.lines[i - 1] for i in range(first, last + 1) if i <= len(self.lines)):
            return
        function = ".".join(self.functions) or "<module>"
        if {(self.rel, r, f) for r in (rule, "*") for f in (function, "*")} & ALLOWED.keys():
            return
        self.findings.append(Finding(self.rel, first, rule, message, function))

    # ------------------------------------------------------------------ rules
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in POSIX_MODULES:
                self._report(node, "posix-only", f"import {alias.name} (POSIX-only module)")
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = (node.module or "").split(".")[0]
        if node.level == 0 and mod in POSIX_MODULES:
            self._report(node, "posix-only", f"from {node.module} import ... (POSIX-only module)")
        if node.level == 0 and mod in ("os", "signal"):
            for alias in node.names:
                if (mod == "os" and (alias.name in POSIX_OS or alias.name.startswith(POSIX_OS_PREFIXES))) or (
                        mod == "signal" and alias.name in POSIX_SIGNAL):
                    self._report(node, "posix-only", f"from {mod} import {alias.name} (not on Windows)")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = _dotted(node)
        if name.startswith("os.") and name.count(".") == 1:
            attr = name[3:]
            if attr in POSIX_OS or attr.startswith(POSIX_OS_PREFIXES):
                self._report(node, "posix-only", f"{name} does not exist on Windows")
        elif name.startswith("signal.") and name[7:] in POSIX_SIGNAL:
            self._report(node, "posix-only", f"{name} does not exist on Windows")
        self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a docstring: documentation, not a path the code uses
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, str):
            if value.startswith(POSIX_PATH_PREFIXES) and " " not in value.strip():
                self._report(node, "posix-path", f"POSIX system path {value!r}")
            if value in ("bin", "bin/python", "bin/pip") or value.startswith(("bin/", ".venv/bin", "/bin/")) or \
                    "/bin/python" in value or "/bin/pip" in value or "/bin/aipc" in value or "/bin/dvc" in value:
                if not (self.function_scripts and self.function_scripts[-1]):
                    self._report(node, "venv-bin", f"venv path {value[:60]!r} has no Windows (Scripts) branch")

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
        if any(s in text for s in ("/bin/python", "/bin/pip", "/bin/aipc", "/bin/dvc", ".venv/bin")):
            if not (self.function_scripts and self.function_scripts[-1]):
                self._report(node, "venv-bin", "venv path in an f-string has no Windows (Scripts) branch")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = _dotted(node.func)
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        self._check_encoding(node, func, kwargs)
        self._check_rename(node, func)
        if func in ("shutil.rmtree", "rmtree"):
            flag = kwargs.get("ignore_errors", node.args[1] if len(node.args) > 1 else None)
            if isinstance(flag, ast.Constant) and flag.value is True:
                self._report(node, "rmtree-ignore", "shutil.rmtree(ignore_errors=True) leaves read-only files behind "
                             "on Windows; use pipeline.core.artifacts.remove_tree")
        self.generic_visit(node)

    def _check_encoding(self, node: ast.Call, func: str, kwargs: dict[str, ast.AST]) -> None:
        has_encoding = "encoding" in kwargs
        if any(isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith(POSIX_PATH_PREFIXES)
               for n in ast.walk(node.func)) or any(isinstance(n, ast.Constant) and isinstance(n.value, str)
                                                   and n.value.startswith(POSIX_PATH_PREFIXES) for a in node.args[:1]
                                                   for n in ast.walk(a)):
            return  # a Linux system file: reported (once) by posix-path if unguarded; its encoding is moot
        method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
        receiver = _dotted(node.func.value) if isinstance(node.func, ast.Attribute) else ""
        if func in ("open", "io.open") or (method == "open" and receiver.split(".")[0] not in OPEN_LIKE_MODULES):
            mode_pos = 1 if func in ("open", "io.open") else 0
            mode = kwargs.get("mode", node.args[mode_pos] if len(node.args) > mode_pos else None)
            text = mode is None or (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "b" not in mode.value)
            positional_encoding = len(node.args) > mode_pos + 2
            if text and not has_encoding and not positional_encoding:
                self._report(node, "encoding", f"{func or '.open'}() in text mode without encoding= (cp1252 on Windows)")
        elif method == "read_text" and not node.args and not has_encoding:
            self._report(node, "encoding", ".read_text() without encoding= (cp1252 on Windows)")
        elif method == "write_text" and len(node.args) < 2 and not has_encoding:
            self._report(node, "encoding", ".write_text() without encoding= (cp1252 on Windows)")
        elif func.startswith("subprocess.") and func.split(".")[-1] in SUBPROCESS_TEXT:
            text = any(isinstance(kwargs.get(k), ast.Constant) and kwargs[k].value is True  # type: ignore[union-attr]
                       for k in ("text", "universal_newlines"))
            if text and not has_encoding and not _python_child(node, kwargs):
                self._report(node, "encoding", f"{func}(text=True) without encoding= decodes output as cp1252 on Windows")
        elif func.split(".")[-1] in ("NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"):
            mode = kwargs.get("mode", node.args[0] if node.args else None)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and "b" not in mode.value \
                    and not has_encoding:
                self._report(node, "encoding", f"{func}(mode={mode.value!r}) without encoding= (cp1252 on Windows)")

    def _check_rename(self, node: ast.Call, func: str) -> None:
        method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
        if func == "os.rename":
            self._report(node, "rename", "os.rename fails on Windows when the target exists; use os.replace for files, "
                         "pipeline.core.artifacts helpers for folders")
            return
        if func in ("os.replace", "shutil.move"):
            source = node.args[0] if node.args else None
        elif method in ("rename", "replace") and len(node.args) == 1 and not func.startswith(("os.", "str.")):
            source = node.func.value  # type: ignore[union-attr]
        else:
            return
        words = " ".join(_names(source)).lower() if source is not None else ""
        if any(word in words for word in FOLDER_WORDS):
            self._report(node, "rename", f"{func or '.' + method}() of what looks like a folder: Windows refuses while "
                         "a file inside is open, mapped or scanned; use pipeline.core.artifacts helpers")


def _names(node: ast.AST) -> list[str]:
    """Identifiers in an expression (``self.out_dir / "x"`` -> ``["self", "out_dir"]``)."""
    found = []
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            found.append(n.id)
        elif isinstance(n, ast.Attribute):
            found.append(n.attr)
    return found


def check_file(path: Path, root: Path = ROOT) -> list[Finding]:
    """The findings in one Python file."""
    source = path.read_text(encoding="utf-8")
    rel = path.resolve().relative_to(root).as_posix() if path.resolve().is_relative_to(root) else str(path)
    tree = ast.parse(source, filename=str(path))
    variables = _platform_variables(tree)
    checker = _Checker(rel, source.splitlines(), variables, *_platform_markers(tree, variables))
    checker.visit(tree)
    return checker.findings


def check(targets: list[Path] | None = None, root: Path = ROOT) -> list[Finding]:
    """The findings in every Python file under ``targets`` (default: pipeline/, tests/, scripts/, bootstrap.py)."""
    targets = targets or [root / t for t in DEFAULT_TARGETS]
    files: list[Path] = []
    for target in targets:
        files.extend(sorted(target.rglob("*.py")) if target.is_dir() else [target])
    findings: list[Finding] = []
    for file in files:
        findings.extend(check_file(file, root))
    return findings


def main(argv: list[str] | None = None) -> int:
    """Print every finding; exit 1 if there is any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="files or folders (default: pipeline/, tests/, scripts/, bootstrap.py)")
    args = parser.parse_args(argv)
    findings = check(args.paths or None)
    for finding in findings:
        print(finding)
    print(f"{len(findings)} Windows finding(s)" if findings else "no Windows findings", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
