"""README.md and docs/*.md against the repository: a short front page with a table of
contents, links that resolve, a code map that matches the tree, and quoted commands that
still work (scripts and their flags, make targets, the CLI, hyperparameter names)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from tabtransformer import cli, hyperparameters

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
MAX_README_LINES = 300

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)[^)]*\)")
SHELL = {"", "bash", "sh", "shell", "console"}
# Flags whose value is NAME=VALUE (or k=v,k=v) hyperparameters over the defaults.
HP_FLAGS = {"--hyperparameters", "--hp", "--set", "--tt-set", "--tt-config"}
COMMAND_END = {"|", "||", "&&", ";", "&", ">", ">>", "<"}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(path.read_text())]


def prose(path: Path) -> str:
    """The page without its code blocks and inline code."""
    return INLINE_CODE.sub("", FENCE.sub("", path.read_text()))


def section(path: Path, title: str) -> str:
    """The text under the `## title` heading, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", path.read_text(), re.M | re.S)
    assert match, f"{rel(path)} has no '## {title}' section"
    return match.group(1)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(prose(path)) if not re.match(r"[a-z][\w+.-]*:", t)]


def link_target(page: Path, target: str) -> tuple[Path, str]:
    file_part, _, fragment = target.partition("#")
    return ((page.parent / file_part).resolve() if file_part else page), fragment


# --- (a) the front page, its table of contents, links -------------------------------


def test_readme_is_a_front_page():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES})"


def test_readme_table_of_contents_links_every_docs_page():
    assert DOCS, "no docs/*.md pages"
    contents = section(README, "Documentation")
    linked = {link_target(README, t)[0] for t in LINK.findall(contents)}
    missing = [rel(p) for p in DOCS if p.resolve() not in linked]
    assert not missing, f"README's '## Documentation' does not link {missing}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page):
    broken = []
    for target in relative_links(page):
        path, fragment = link_target(page, target)
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{target} (no heading #{fragment} in {rel(path)})")
    assert not broken, f"{rel(page)}: broken links {broken}"


# --- (b) "Where things live" matches the tree ---------------------------------------


def code_map() -> list[str]:
    """The paths in README's "Where things live" block: an unindented line names paths
    (comma-separated) before its description; a line indented by two spaces names an entry
    of the folder above it; deeper lines continue a description."""
    blocks = FENCE.findall(section(README, "Where things live"))
    assert blocks, "README's 'Where things live' has no code block"
    listed, parent = [], None
    for line in blocks[0][1].splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        head = re.split(r" {2,}", line.strip())[0]
        if indent == 0:
            names = [name.strip() for name in head.split(",")]
            listed += names
            parent = names[0] if len(names) == 1 and names[0].endswith("/") else None
        elif indent == 2 and parent:
            listed.append(parent + head)
    return listed


def test_every_path_in_the_code_map_exists():
    missing = [p for p in code_map() if not (REPO / p).exists()]
    assert not missing, f"'Where things live' lists paths that do not exist: {missing}"


@pytest.mark.parametrize(
    "folder, pattern",
    [("src/tabtransformer", "*.py"), ("src/tabtransformer/serving", "*.py"), ("scripts", "*")],
)
def test_every_module_and_script_is_in_the_code_map(folder, pattern):
    listed = {p.rstrip("/") for p in code_map()}
    files = [p for p in sorted((REPO / folder).glob(pattern)) if p.is_file()]
    missing = [rel(p) for p in files if rel(p) not in listed]
    assert not missing, f"'Where things live' does not list {missing}"


# --- (c) quoted commands ------------------------------------------------------------


def shell_commands() -> list[tuple[str, list[str]]]:
    """(page, tokens) of every command line in the pages' shell code blocks: backslash
    continuations joined, comments dropped, split at |, &&, ; and &."""
    out = []
    for page in PAGES:
        for lang, body in code_blocks(page):
            if lang not in SHELL:
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line).strip()
                if not line:
                    continue
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                try:
                    tokens = list(lexer)
                except ValueError:  # an unbalanced quote: plain words
                    tokens = line.split()
                command: list[str] = []
                for token in [*tokens, ";"]:
                    if token in COMMAND_END:
                        if command:
                            out.append((rel(page), command))
                        command = []
                    else:
                        command.append(token)
    return out


def invocations(match) -> list[tuple[str, str, list[str]]]:
    """(page, what, arguments) wherever `match(token)` gives `what` in a command."""
    out = []
    for page, tokens in shell_commands():
        for i, token in enumerate(tokens):
            what = match(token)
            if what:
                out.append((page, what, tokens[i + 1 :]))
    return out


def script_calls() -> list[tuple[str, str, list[str]]]:
    return invocations(
        lambda t: re.fullmatch(r"(?:\./)?(scripts/[\w.-]+)", t) and t.removeprefix("./")
    )


def cli_calls() -> list[tuple[str, str, list[str]]]:
    """`tabtransformer ...` (any path to it, after VAR=value settings) and `python -m
    tabtransformer ...`: (page, program, arguments)."""
    out = []
    for page, tokens in shell_commands():
        start = 0
        while start < len(tokens) and re.fullmatch(r"\w+=.*", tokens[start]):
            start += 1
        program = tokens[start : start + 1]
        if program and (program[0] == "tabtransformer" or program[0].endswith("/tabtransformer")):
            out.append((page, program[0], tokens[start + 1 :]))
        elif tokens[start + 1 : start + 3] == ["-m", "tabtransformer"]:
            out.append((page, "python -m tabtransformer", tokens[start + 3 :]))
    return out


def flags(arguments: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in arguments if re.match(r"--[\w-]+", a)]


def hyperparameter_names() -> list[tuple[str, str]]:
    """(page, name) set by a command (`--set name=value`, `--tt-set a=1,b=2`,
    `--tt-config NAME=a=1,b=2`, ...) or by a hyperparameters JSON/dict snippet."""
    names = []
    for page, tokens in shell_commands():
        for i, token in enumerate(tokens):
            flag, eq, value = token.partition("=")
            if flag not in HP_FLAGS:
                continue
            if not eq:
                value = tokens[i + 1] if i + 1 < len(tokens) else ""
            if flag == "--tt-config":
                value = value.partition("=")[2]
            names += [(page, pair.split("=", 1)[0]) for pair in value.split(",") if pair]
    for page in PAGES:
        for _, body in code_blocks(page):
            for line in body.splitlines():
                if "hyperparameters" not in line.lower():
                    continue
                for snippet in re.findall(r"\{[^{}]*\}", line):
                    keys = re.findall(r"[{,]\s*[\"']?(\w+)[\"']?\s*:", snippet)
                    names += [(rel(page), key) for key in keys]
    return names


def test_the_command_parser_finds_commands():
    """Guards the parsing below: the pages quote all four kinds of command."""
    assert script_calls() and cli_calls() and hyperparameter_names()
    assert invocations(lambda t: t == "make" and t)


def test_quoted_scripts_exist_and_know_their_flags():
    problems = []
    for page, script, arguments in script_calls():
        path = REPO / script
        if not path.is_file():
            problems.append(f"{page}: {script} does not exist")
            continue
        source = path.read_text()
        for flag in flags(arguments):
            if f'"{flag}"' not in source and f"'{flag}'" not in source:
                problems.append(f"{page}: {script} has no option {flag}")
    assert not problems, problems


def test_quoted_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", makefile, re.M))
    quoted = [
        (page, arguments[0])
        for page, _, arguments in invocations(lambda t: t == "make" and t)
        if arguments and not arguments[0].startswith("-")
    ]
    missing = [f"{page}: make {target}" for page, target in quoted if target not in targets]
    assert not missing, f"no such Makefile target: {missing}"


def test_quoted_cli_invocations_parse(capsys):
    problems = []
    for page, _, arguments in cli_calls():
        if not arguments:
            continue
        command = arguments[0]
        with pytest.raises(SystemExit) as stopped:
            cli.main([command, "--help"])
        usage = capsys.readouterr().out
        if stopped.value.code != 0:
            problems.append(f"{page}: tabtransformer {command} is not a command")
            continue
        problems += [
            f"{page}: tabtransformer {command} has no option {flag}"
            for flag in flags(arguments[1:])
            if flag not in usage
        ]
    assert not problems, problems


def test_quoted_hyperparameters_exist_in_the_schema():
    unknown = [
        f"{page}: {name}"
        for page, name in hyperparameter_names()
        if name not in hyperparameters.BY_NAME
    ]
    assert not unknown, f"not in tabtransformer.hyperparameters.SCHEMA: {unknown}"


@pytest.mark.slow
def test_quoted_python_scripts_answer_help():
    """Each quoted Python script runs `--help` with exit code 0 (and names the subcommand
    the quote uses, where it has subcommands). A script without argparse would run for
    real on `--help`, so it is reported instead of run."""
    calls: dict[str, set[str]] = {}
    for _, script, arguments in script_calls():
        if script.endswith(".py") and (REPO / script).is_file():
            first = arguments[0] if arguments and not arguments[0].startswith("-") else ""
            calls.setdefault(script, set()).add(first)
    assert calls
    problems = []
    for script, subcommands in sorted(calls.items()):
        if "argparse" not in (REPO / script).read_text():
            problems.append(f"{script} has no argparse --help")
            continue
        done = subprocess.run(
            [sys.executable, script, "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            problems.append(f"{script} --help exited {done.returncode}: {done.stderr[-500:]}")
            continue
        choices = re.search(r"\{([\w,-]+)\}", done.stdout)
        if choices:
            known = set(choices.group(1).split(","))
            problems += [f"{script} has no command {s}" for s in subcommands - known if s]
    assert not problems, problems
