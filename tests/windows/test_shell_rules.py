"""Every command we show can be pasted as is (issue 29): README/docs code blocks, and commands the project prints.

Which shell a fenced block is checked against comes from its fence language:

* ``bat`` / ``batch``: cmd **and** PowerShell (the quick start promises both; such a block carries no comments);
  ``cmd``: cmd only; ``powershell`` / ``ps1`` / ``pwsh``: PowerShell only.
* ``shell``: all three (a command that is the same everywhere: ``aipc sweep``, ``dvc metrics diff``).
* ``bash`` / ``sh``: bash; ``console``: bash for its ``$ ``-prompted lines, the rest is output.
* Untagged blocks are text (trees, output, messages) and are not parsed; so that no command hides in one
  unchecked, a line that starts with ``$ `` or with a command we ship (``aipc``, ``dvc``, ``python``, ...) fails
  there: tag the block with its shell. Other languages (python, yaml, ...) are not shell.

Commands in the project's own messages (a backticked string starting with such a command, in any string of
pipeline/ or bootstrap.py that is not a docstring; f-string fields read as a plain word) must pass all three.

The rules, per command line (continuations joined: ``^`` cmd, backtick PowerShell, ``\\`` bash):

* cmd (``"`` toggles quoting, ``^`` escapes the next character): no unquoted ``& | < > ( ) ;``; nothing after
  the command that looks like a comment (``::``, ``#``, ``REM``: cmd passes them on as arguments); ``::`` and
  ``REM`` only at line start.
* PowerShell (``'...'`` literal, ``"..."`` expands ``$`` and backtick, backtick escapes): no unquoted
  ``; | & ( ) { } < > ,``; no ``$`` or backtick except a ``$``/``&`` that starts the line; no ``@`` or ``#`` at the
  start of an argument (splatting, a comment); ``#`` only at line start; no ``::`` after the command; no ``--%``.
* bash (``shlex`` with ``punctuation_chars``, after cutting a ``#`` comment that starts a word outside quotes):
  no unquoted operator but ``&& || | ;`` (so no redirect, subshell or background ``&``), and no unquoted
  ``{a,b}`` brace expansion. A trailing ``# comment`` is fine in bash.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELLS = {"bat": ("cmd", "powershell"), "batch": ("cmd", "powershell"), "cmd": ("cmd",),
          "powershell": ("powershell",), "ps1": ("powershell",), "pwsh": ("powershell",),
          "bash": ("bash",), "sh": ("bash",), "console": ("bash",), "shell": ("cmd", "powershell", "bash")}
COMMANDS = ("aipc", "dvc", "python", "python3", "py", "pip", "git", "hf", "huggingface-cli", "ray", "optimum-cli")
COMMAND_START = re.compile(r"^(?:\S*[\\/])?(?:" + "|".join(map(re.escape, COMMANDS)) + r")(?:\.exe)?(?:\s|$)")
CONTINUATION = {"cmd": "^", "powershell": "`", "bash": "\\"}


def cmd_problems(line: str) -> list[str]:
    """What breaks when ``line`` is pasted into cmd."""
    text, problems = line.strip(), []
    if not text or text.startswith("::") or re.match(r"(?i)rem(\s|$)", text):
        return []
    if text.startswith("#"):
        return ["a line starting with # is no comment in cmd"]
    if text.endswith("`"):
        problems.append("backtick continuation does nothing in cmd")
    quoted, words, word, i = False, [], "", 0
    while i < len(text):
        char = text[i]
        if char == '"' or quoted:
            quoted ^= char == '"'
            word += char
        elif char == "^":  # escapes the next character
            word += text[i + 1 : i + 2]
            i += 1
        elif char.isspace():
            words, word = words + [word] * bool(word), ""
        else:
            problems += [f"unquoted {char!r}"] * (char in "&|<>();")
            word += char
        i += 1
    words += [word] if word else []
    problems += ["unclosed quote"] * quoted
    comment = next((w for w in words[1:] if w.startswith(("::", "#")) or w.upper() == "REM"), None)
    return ([f"{comment!r} after a command is no comment in cmd (its words become arguments)"] if comment else []) + problems


def powershell_problems(line: str) -> list[str]:
    """What breaks when ``line`` is pasted into PowerShell (5.1 and 7)."""
    text, problems = line.strip(), []
    if not text or text.startswith("#"):
        return []
    if text.startswith("::") or re.match(r"(?i)rem\s", text):
        return ["a :: or REM line is no comment in PowerShell"]
    if text.endswith("^"):
        problems.append("^ continuation does nothing in PowerShell")
    state, word_start = "", True
    for i, char in enumerate(text):
        after = text[i + 1 : i + 2]
        if state == "'":
            state = "" if char == "'" else state
        elif state == '"':
            state = "" if char == '"' else state
            if char == "`" or (char == "$" and (after.isalnum() or after in "_{(")):
                problems.append(f"{char!r} is expanded inside double quotes")
        elif char in "'\"":
            state = char
        elif char == "#" and word_start:
            problems.append("a # after a command starts a comment only in PowerShell: put it on its own line")
            break
        elif char in "$&" and i == 0:
            pass  # `$env:X = ...`, `& "path\to\program"`: the statement itself
        elif char in "$`" or (char == "@" and word_start) or char in ";|&(){}<>,":
            problems.append(f"unquoted {char!r}")
        elif text.startswith("--%", i) and word_start:
            problems.append("--% stops PowerShell's parsing")
        elif text.startswith("::", i) and word_start:
            problems.append(":: after a command is no comment in PowerShell (its words become arguments)")
        word_start = char.isspace()
    return problems + ["unclosed quote"] * bool(state)


def bash_problems(line: str) -> list[str]:
    """What breaks (or changes meaning) when ``line`` is pasted into bash."""
    state, cut = "", len(line)
    for i, char in enumerate(line):  # a # starts a comment only at the start of a word, outside quotes
        if state:
            state = "" if char == state else state
        elif char in "'\"":
            state = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            cut = i
            break
    code = line[:cut]
    lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    try:
        tokens = list(lexer)
    except ValueError as err:
        return [f"shlex: {err}"]
    problems = [f"unquoted {t!r}" for t in tokens if set(t) <= set("();<>|&") and t not in ("&&", "||", "|", ";")]
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "''", code)
    return problems + [f"brace expansion {m}" for m in re.findall(r"\{[^{}\s]*,[^{}\s]*\}", unquoted)]


CHECKS = {"cmd": cmd_problems, "powershell": powershell_problems, "bash": bash_problems}


def command_lines(lines: list[str], shell: str, console: bool = False) -> list[tuple[int, str]]:
    """(index, command) with continuation lines joined; for ``console`` only the ``$ ``-prompted lines."""
    found: list[tuple[int, str]] = []
    joining = False
    for index, line in enumerate(lines):
        if console and not joining:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if joining:
            found[-1] = (found[-1][0], found[-1][1][:-1] + " " + line.strip())
        else:
            found.append((index, line))
        joining = line.rstrip().endswith(CONTINUATION[shell])
    return found


def code_blocks(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number of the fence, language, lines) of every fenced block in a Markdown file."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if current is None and fence:
            current = (number, fence.group(2).lower(), [], fence.group(1))
        elif current is not None and line.strip() == current[3]:
            blocks.append(current[:3])
            current = None
        elif current is not None:
            current[2].append(line)
    return blocks


def block_problems(lines: list[str], language: str) -> list[str]:
    """Every problem of one block, as ``+offset shell: line: problem``."""
    if not language:
        return [f"+{i + 1}: {line.strip()!r} is a command in an untagged block: tag the block with its shell"
                for i, line in enumerate(lines) if line.startswith("$ ") or COMMAND_START.match(line.strip())]
    problems = []
    for shell in SHELLS.get(language, ()):
        for index, command in command_lines(lines, shell, console=language == "console"):
            problems += [f"+{index + 1} {shell}: {command.strip()!r}: {p}" for p in CHECKS[shell](command)]
    return problems


def markdown_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def documentation_problems(files: list[Path]) -> list[str]:
    return [f"{path.name}:{start}{problem}" for path in files for start, language, lines in code_blocks(path)
            for problem in block_problems(lines, language)]


def _string_text(node: ast.AST) -> str:
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""


def printed_commands(files: list[Path]) -> list[tuple[str, str]]:
    """(where, command) for each backticked command in a non-docstring string of ``files``."""
    found = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                ast.AsyncFunctionDef)) and n.body and isinstance(n.body[0], ast.Expr)}
        skip |= {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            for command in [] if id(node) in skip else re.findall(r"`([^`\n]+)`", _string_text(node)):
                if COMMAND_START.match(command):
                    found.append((f"{path.relative_to(ROOT).as_posix()}:{node.lineno}", command))
    return found


def test_each_shell_rule_catches_what_breaks_a_pasted_line() -> None:
    assert cmd_problems("py -3.12 bootstrap.py demo    :: install (pinned)")[0].startswith("'::' after a command")
    assert "unquoted '>'" in cmd_problems("aipc repro download -> reference")
    assert cmd_problems('aipc exp-run -S "a=(1;2)" ^') == [] and cmd_problems(":: a comment line") == []
    assert powershell_problems("aipc repro    # then validate")[0].startswith("a # after a command")
    assert {"unquoted '('", "unquoted ','"} <= set(powershell_problems("py bootstrap.py demo :: x (pinned, y)"))
    assert powershell_problems("aipc sweep sweep.grid={a:[1,2]}") != []
    assert powershell_problems("$env:HF_TOKEN = 'hf_x'") == [] and powershell_problems("aipc x a@b 'c,d'") == []
    assert powershell_problems('aipc chat "$HOME"') == ["'$' is expanded inside double quotes"]
    assert powershell_problems("aipc repro :: all stages")[0].startswith(":: after a command")
    assert bash_problems("aipc repro    # download -> reference") == [] and bash_problems("a && b | c") == []
    assert bash_problems("aipc repro a#b > out") == ["unquoted '>'"]
    assert bash_problems("aipc sweep sweep.grid={a:[1,2]}") == ["brace expansion {a:[1,2]}"]
    assert bash_problems("aipc sweep 'sweep.grid={a:[1,2]}' (x)") == ["unquoted '('", "unquoted ')'"]


def test_blocks_are_read_by_their_fence_language(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("```bat\nREM cmd only\naipc repro\n```\n\n```console\n$ aipc x\nerror: a > b\n```\n\n"
                   "```\naipc repro\n```\n\n```powershell\n$env:X = '1'\naipc a `\n  b\n```\n", encoding="utf-8")
    assert [(lang, len(lines)) for _, lang, lines in code_blocks(doc)] == [
        ("bat", 2), ("console", 2), ("", 1), ("powershell", 3)]
    assert documentation_problems([doc]) == [
        "doc.md:1+1 powershell: 'REM cmd only': a :: or REM line is no comment in PowerShell",
        "doc.md:11+1: 'aipc repro' is a command in an untagged block: tag the block with its shell"]


def test_readme_and_docs_commands_are_paste_safe() -> None:
    problems = documentation_problems(markdown_files())
    assert not problems, "\n".join(problems)


def test_commands_the_project_prints_are_paste_safe_in_cmd_powershell_and_bash() -> None:
    commands = printed_commands([*sorted((ROOT / "pipeline").rglob("*.py")), ROOT / "bootstrap.py"])
    assert any(command.startswith("aipc compose") for _, command in commands), "the finder finds nothing"
    problems = [f"{where}: `{command}`: {shell}: {problem}" for where, command in commands
                for shell, check in CHECKS.items() for problem in check(command)]
    assert not problems, "\n".join(problems)


def test_the_old_readme_lines_fail_in_both_windows_shells() -> None:
    """Two README lines before issue 29, as a user pasted them."""
    old = ["py -3.12 bootstrap.py demo    :: install (pinned, into .venv) and run the whole pipeline",
           ".venv\\Scripts\\aipc repro      :: dvc repro: download -> reference -> export_* -> validate_* -> report"]
    assert all(cmd_problems(line) and powershell_problems(line) for line in old)
