"""The user documentation stays short, current and true to the code.

README.md, CHANGELOG.md and docs/*.md describe the product as it is: no
development history; every ``journey`` and ``make`` line of their ``sh``
examples parses with the real CLI and Makefile; every module, function, file,
test, ``JOURNEY_*`` variable and link they name exists. When code moves, these
fail and name the stale line.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.cli import PASS_THROUGH, build_parser, command_index
from stream.settings import Settings, to_environ

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CHANGELOG = ROOT / "CHANGELOG.md"
DOCS = ROOT / "docs"
DOC_PAGES = ("architecture.md", "operations.md", "performance.md", "faust-internals.md")
README_MAX_LINES = 260

#: Where a pass-through subcommand's own arguments go (checked if it exposes a parser).
PASS_THROUGH_MODULES = {"simulate": "stream.simulator.cli"}

HISTORY = {
    "a numbered session": re.compile(r"\bsessions?\s+\d+", re.IGNORECASE),
    "a numbered round": re.compile(r"\brounds?\s+\d+", re.IGNORECASE),
    "'as found'": re.compile(r"\bas found\b", re.IGNORECASE),
    "'tried and dropped'": re.compile(r"\btried[\s-]+and[\s-]+dropped\b", re.IGNORECASE),
    # Hex words of 7-40 digits with at least one digit and one letter: commit hashes.
    "a commit hash": re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b"),
}

#: ``stream.faust_ext.fastpath.write_raw``, ``loadtest.bench`` ...
DOTTED = re.compile(r"(?<![\w./-])((?:stream|loadtest)(?:\.[A-Za-z_]\w*)+)")
#: ``stream/journey/clock.py``, ``tests/unit/test_rules.py::test_name`` ...
REPO_PATH = re.compile(
    r"(?<![\w./-])((?:stream|loadtest|tests|config|docs|scripts|\.ci)/[\w./-]*[\w-])(?:::(\w+))?"
)
ENV_VAR = re.compile(r"\bJOURNEY_[A-Z0-9_]*[A-Z0-9](_\*)?")
LINK = re.compile(r"\]\(([^)\s]+)\)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def user_docs() -> list[Path]:
    return [README, CHANGELOG, *sorted(DOCS.glob("*.md"))]


def example_docs() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def sh_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, command) of every line in the file's fenced ``sh`` blocks.

    Continuation lines (ending in a backslash) are joined to the line they continue.
    """
    in_sh = False
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if line.startswith("```"):
            in_sh = not in_sh and line[3:].strip() == "sh"
            continue
        if not in_sh:
            continue
        start, text = pending if pending is not None else (number, "")
        text = f"{text} {line}".strip()
        if text.endswith("\\"):
            pending = (start, text[:-1])
            continue
        pending = None
        if text:
            yield start, text


def command_words(line: str) -> list[str]:
    """The words of a shell line's first command, without leading ``VAR=value`` and ``time``.

    Redirections, pipes and the commands after ``;`` or ``&&`` are cut off.
    """
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if set(word) <= set("();<>|&"):
            break
        words.append(word)
    while words and (ASSIGNMENT.match(words[0]) or words[0] == "time"):
        words = words[1:]
    return words


def journey_args(line: str) -> list[str] | None:
    """The arguments of a ``journey`` command line (any ``.../bin/journey``), else None."""
    words = command_words(line)
    if words and (words[0] == "journey" or words[0].endswith("/bin/journey")):
        return words[1:]
    return None


def parse(parser: Any, argv: list[str]) -> str | None:
    """None if ``parser`` accepts ``argv`` (``--help`` included), else its complaint."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return out.getvalue().strip().splitlines()[-1] if out.getvalue() else str(exc)
    return None


def check_journey(argv: list[str]) -> str | None:
    """Parse ``journey ARGV`` as ``stream.cli.main`` does."""
    at = command_index(argv)
    if at is None or argv[at] not in PASS_THROUGH:
        return parse(build_parser(), argv)
    # ``main`` hands everything after these subcommands to their own parsers.
    command = argv[at]
    problem = parse(build_parser(), argv[: at + 1])
    if problem is not None:
        return problem
    module = importlib.import_module(PASS_THROUGH_MODULES[command])
    own = getattr(module, "build_parser", None)
    return parse(own(), argv[at + 1 :]) if own is not None else None


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    targets: set[str] = set()
    for match in re.finditer(r"^([A-Za-z0-9_.$()/-][^:=#\n]*?)\s*:(?!=)", text, re.MULTILINE):
        targets.update(name for name in match.group(1).split() if not name.startswith("."))
    return targets


def resolve(dotted: str) -> Any:
    """The object a dotted name refers to (import the longest module prefix, then getattr)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (name + ".").startswith(exc.name + "."):
                raise  # a module that exists failed to import
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out: set[str] = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def lines_of(path: Path) -> Iterator[tuple[int, str]]:
    yield from enumerate(path.read_text().splitlines(), start=1)


@pytest.fixture(scope="module")
def settings_variables() -> set[str]:
    return set(to_environ(Settings())) | {"JOURNEY_CONFIG"}


def test_readme_is_a_short_user_document() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; depth goes to docs/"


def test_the_docs_and_the_changelog_exist() -> None:
    missing = [p for p in (CHANGELOG, *(DOCS / page for page in DOC_PAGES)) if not p.is_file()]
    assert not missing, f"missing: {[rel(p) for p in missing]}"


@pytest.mark.parametrize("path", user_docs(), ids=rel)
def test_no_development_history(path: Path) -> None:
    found = [
        f"{rel(path)}:{n}: {what}: {m.group(0)!r}"
        for n, line in lines_of(path)
        for what, pattern in HISTORY.items()
        for m in pattern.finditer(line)
    ]
    assert not found, "the docs describe the product as it is (git log keeps history):\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize("path", example_docs(), ids=rel)
def test_journey_examples_parse(path: Path) -> None:
    checked, problems = 0, []
    for n, line in sh_lines(path):
        argv = journey_args(line)
        if argv is None:
            continue
        checked += 1
        problem = check_journey(argv)
        if problem is not None:
            problems.append(f"{rel(path)}:{n}: {line}\n    {problem}")
    assert not problems, "\n".join(problems)
    if path == README:
        assert checked, "README.md shows no journey command"


@pytest.mark.parametrize("path", example_docs(), ids=rel)
def test_make_examples_name_existing_targets(path: Path) -> None:
    targets = make_targets()
    problems = []
    for n, line in sh_lines(path):
        words = command_words(line)
        if not words or words[0] != "make":
            continue
        wanted = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
        problems += [f"{rel(path)}:{n}: no make target {t!r}" for t in wanted if t not in targets]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", user_docs(), ids=rel)
def test_package_references_exist(path: Path) -> None:
    problems = []
    for n, line in lines_of(path):
        for m in DOTTED.finditer(line):
            try:
                resolve(m.group(1))
            except (ImportError, AttributeError) as exc:
                problems.append(f"{rel(path)}:{n}: {m.group(1)}: {exc!r}")
        for m in REPO_PATH.finditer(line):
            target, test = ROOT / m.group(1), m.group(2)
            if not target.exists():
                problems.append(f"{rel(path)}:{n}: no file {m.group(1)}")
            elif test and not re.search(rf"^(async )?def {test}\(", target.read_text(), re.M):
                problems.append(f"{rel(path)}:{n}: no test {test} in {m.group(1)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", user_docs(), ids=rel)
def test_environment_variables_are_settings(path: Path, settings_variables: set[str]) -> None:
    problems = []
    for n, line in lines_of(path):
        for m in ENV_VAR.finditer(line):
            name, wildcard = m.group(0).removesuffix("_*"), m.group(1)
            known = (
                any(v.startswith(name + "_") for v in settings_variables)
                if wildcard
                else name in settings_variables
            )
            if not known:
                problems.append(f"{rel(path)}:{n}: {m.group(0)} is no setting")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", user_docs(), ids=rel)
def test_links_point_at_existing_files_and_headings(path: Path) -> None:
    problems = []
    for n, line in lines_of(path):
        for m in LINK.finditer(line):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                problems.append(f"{rel(path)}:{n}: no file {target}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                problems.append(f"{rel(path)}:{n}: no heading #{anchor} in {rel(linked)}")
    assert not problems, "\n".join(problems)
