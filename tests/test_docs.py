"""The docs check: every command, import, path and link that README.md and docs/*.md show is real.

- every ``edgecompress ...`` line in a ```bash / ```sh / ```console block (and every ``run: edgecompress ...`` of a
  ```yaml CI step, every inline `` `edgecompress ...` ``) is parsed against the real Click CLI
  (nothing runs): the command exists, every option it uses exists, a ``click.Choice`` option's value is one of
  its choices, and Click's own parser accepts the line (missing required options and placeholder paths aside);
- every ``python benchmarks/X.py`` names a file that exists, and so does every backticked path under
  ``compress/``, ``runtimes/``, ``benchmarks/`` or ``profiles/``;
- every ``from compress... import ...`` / ``import compress...`` line of a ```python block imports, and every
  inline ``compress.module.Name`` the prose names resolves (one subprocess for all of them);
- docs/reference/architecture.md's folder map names only files and folders that exist;
- every relative link ``](path)`` and image points to a file that exists, and a ``#anchor`` into a Markdown
  file to one of its headings;
- README.md is a front door: at most 300 lines, and its table of contents links the four sections of docs/
  (guides/, reference/, benchmarks/, each with a README.md that links every page in it, and contributing.md).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
DOCS = [README, *PAGES]
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^([ \t]*)```[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1```[ \t]*$", re.M | re.S)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _blocks(path: Path, languages: set[str]) -> list[tuple[str, int]]:
    """(code, first line number) of every fenced block in one of ``languages`` (indented fences included)."""
    text = path.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        if m.group(2).lower() in languages:
            code = textwrap.dedent(m.group(3))
            found.append((code, text.count("\n", 0, m.start(3)) + 1))
    return found


def _strip_code(text: str) -> str:
    """The Markdown without its fenced blocks and inline code (links in code are not links)."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


# --- edgecompress command lines ---------------------------------------------------------------------------


def _command_lines() -> list[tuple[str, str]]:
    """("file:line", the command line) for every ``edgecompress`` command in a shell block, one per command."""
    out = []
    for path in DOCS:
        for code, start in _blocks(path, SHELL):
            lines = code.split("\n")
            i = 0
            while i < len(lines):
                first = i
                line = lines[i]
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                line = line.strip()
                if line.startswith("$ "):
                    line = line[2:]
                for segment in _segments(line):
                    if segment and segment[0] == "edgecompress":
                        out.append((f"{_rel(path)}:{start + first}", segment))
        for code, start in _blocks(path, {"yaml", "yml"}):  # CI steps: `- run: edgecompress ...`
            for n, line in enumerate(code.split("\n")):
                m = re.match(r"\s*-?\s*run:\s*(edgecompress\s.*)", line)
                if m:
                    out += [(f"{_rel(path)}:{start + n}", s) for s in _segments(m.group(1)) if s[:1] == ["edgecompress"]]
        text = FENCE.sub("", path.read_text(encoding="utf-8"))
        for m in re.finditer(r"`(edgecompress [^`]+)`", text):  # inline: `edgecompress run X --dry-run`
            line_no = text.count("\n", 0, m.start()) + 1
            out += [(f"{_rel(path)}:~{line_no}", s) for s in _segments(m.group(1).replace("\n", " "))
                    if s[:1] == ["edgecompress"]]
    return out


ALTERNATIVE = "\x00"


def _segments(line: str) -> list[list[str]]:
    """The line's tokens, split into commands at ``&&``, ``||``, ``;`` and ``|`` (a ``|`` with no space around
    it is the docs' notation for alternatives, ``--mode static|dynamic``, and stays in its token)."""
    line = re.sub(r"(?<=[^\s|])\|(?=[^\s|])", ALTERNATIVE, line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote in prose-like code: nothing to check
        return []
    segments, current = [], []
    for tok in tokens:
        if tok and set(tok) <= set(";&|()<>"):
            segments.append(current)
            current = []
        else:
            current.append(tok)
    segments.append(current)
    return [[t.replace(ALTERNATIVE, "|") for t in seg] for seg in segments]


def _option_map(cmd: click.Command) -> dict[str, click.Parameter]:
    names = {}
    for param in cmd.get_params(click.Context(cmd)):
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                names[name] = param
    return names


def _takes_value(param: click.Parameter) -> bool:
    return not (getattr(param, "is_flag", False) or getattr(param, "count", False))


def _check_options(cmd: click.Command, where: str, tokens: list[str]) -> tuple[list[str], list[str]]:
    """Problems with ``tokens``' options for ``cmd``, and the tokens made parseable (placeholders dropped,
    the first of ``a|b`` alternatives, ``[--optional]`` brackets removed)."""
    options = _option_map(cmd)
    problems, cleaned = [], []
    expecting: click.Option | None = None
    for raw in tokens:
        tok = raw.strip("[]") if raw.startswith("[") or raw.endswith("]") else raw
        if tok in ("...", "…", ""):
            continue
        if expecting is not None:
            values = tok.split("|")
            if isinstance(expecting.type, click.Choice):
                choices = [str(c) for c in expecting.type.choices]
                folded = [c.lower() for c in choices] if not expecting.type.case_sensitive else choices
                for value in values:
                    probe = value if expecting.type.case_sensitive else value.lower()
                    if probe not in folded:
                        problems.append(f"{where}: {cmd.name} {expecting.opts[-1]}: {value!r} is not one of {choices}")
            cleaned.append(values[0])
            expecting = None
            continue
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            param = options.get(name)
            if param is None:
                problems.append(f"{where}: edgecompress {cmd.name} has no option {name}")
            elif eq:
                if isinstance(param.type, click.Choice):
                    for v in value.split("|"):
                        if v not in [str(c) for c in param.type.choices]:
                            problems.append(f"{where}: {cmd.name} {name}: {v!r} is not one of {list(param.type.choices)}")
                tok = f"{name}={value.split('|')[0]}"
            elif _takes_value(param):
                expecting = param
            cleaned.append(tok)
        elif tok.startswith("-") and len(tok) > 1 and not re.fullmatch(r"-[\d.]+", tok):
            letters = tok[1:]
            param = options.get(f"-{letters[0]}")
            if param is None:
                problems.append(f"{where}: edgecompress {cmd.name} has no option -{letters[0]}")
            elif _takes_value(param):
                if len(letters) == 1:
                    expecting = param
            else:
                for letter in letters[1:]:
                    if f"-{letter}" not in options:
                        problems.append(f"{where}: edgecompress {cmd.name} has no option -{letter}")
            cleaned.append(tok)
        else:
            cleaned.append(tok.split("|")[0])
    return problems, cleaned


def _check_command(where: str, tokens: list[str]) -> list[str]:
    from compress.cli import cli

    ctx = click.Context(cli, info_name="edgecompress")
    cmd: click.Command = cli
    rest = tokens[1:]
    problems: list[str] = []
    while isinstance(cmd, click.Group):
        leading = []
        while rest and rest[0].startswith("-"):
            leading.append(rest.pop(0))
        found, _ = _check_options(cmd, where, leading)
        problems += found
        if not rest:
            if not leading or not any(t in ("--help", "-h", "--version") for t in leading):
                problems.append(f"{where}: `{' '.join(tokens)}` names no subcommand")
            return problems
        name = rest.pop(0)
        sub = cmd.get_command(ctx, name)
        if sub is None:
            return problems + [f"{where}: `edgecompress` has no command {name!r} (in `{' '.join(tokens)}`)"]
        cmd = sub
    found, cleaned = _check_options(cmd, where, rest)
    problems += found
    if found or any(t in ("--help", "-h") for t in cleaned):
        return problems
    try:
        cmd.make_context(cmd.name, cleaned, resilient_parsing=False)
    except click.MissingParameter:
        pass  # a line that shows only the options it is about
    except (click.NoSuchOption, click.BadOptionUsage, click.BadParameter) as exc:
        problems.append(f"{where}: `{' '.join(tokens)}`: {exc.format_message()}")
    except click.UsageError as exc:
        if "unexpected extra argument" not in exc.format_message():
            problems.append(f"{where}: `{' '.join(tokens)}`: {exc.format_message()}")
    except click.exceptions.Exit:
        pass
    return problems


COMMANDS = _command_lines()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 30, COMMANDS


@pytest.mark.parametrize("where,tokens", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses(where, tokens):
    assert _check_command(where, tokens) == []


def test_a_misspelt_option_is_caught():
    problems = _check_command("here", ["edgecompress", "quantize", "m", "--precison", "int8", "--out", "x"])
    assert problems and "--precison" in problems[0]
    problems = _check_command("here", ["edgecompress", "quantize", "m", "--mode", "static|dinamic", "--out", "x"])
    assert problems and "dinamic" in problems[0]
    assert _check_command("here", ["edgecompress", "profiles", "lst"])


# --- files the docs name ----------------------------------------------------------------------------------


def _named_files() -> list[tuple[str, str]]:
    found = set()
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"python3? (benchmarks/[\w./-]+\.py)", text):
            found.add((_rel(path), m.group(1)))
        for m in re.finditer(r"`((?:compress|runtimes|benchmarks|profiles|tests)/[\w./-]*[\w/])[`:\s]", text):
            name = m.group(1)
            if "/." in name or "*" in name or "XXXX" in name:  # caches and patterns, not files in the repository
                continue
            found.add((_rel(path), name))
    return sorted(found)


@pytest.mark.parametrize("page,name", _named_files())
def test_every_named_file_exists(page, name):
    assert (ROOT / name).exists(), f"{page} names {name}, which does not exist"


# --- Python imports ---------------------------------------------------------------------------------------


def _python_imports() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        for code, start in _blocks(path, {"python", "py"}):
            joined = re.sub(r"\(\s*([^)]*?)\s*\)", lambda m: "(" + " ".join(m.group(1).split()) + ")", code, flags=re.S)
            for n, line in enumerate(joined.split("\n")):
                stmt = line.split("#")[0].strip()
                if re.match(r"(from compress[\w.]*\s+import\s|import compress\b)", stmt):
                    out.append((f"{_rel(path)}:{start + n}", stmt))
    return out


def _dotted_names() -> list[tuple[str, str]]:
    """Inline ``compress.module.Name`` references in the prose: each must resolve (a module, or a name in one)."""
    out = set()
    for path in DOCS:
        for m in re.finditer(r"`(compress(?:\.\w+)+)", FENCE.sub("", path.read_text(encoding="utf-8"))):
            out.add((_rel(path), f"_resolve({m.group(1)!r})"))
    return sorted(out)


IMPORTS = _python_imports() + _dotted_names()

_RUNNER = """
import importlib, json, sys
failed = []

def _resolve(dotted):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)

for where, stmt in json.load(sys.stdin):
    try:
        exec(stmt, {"_resolve": _resolve})
    except BaseException as exc:
        failed.append(f"{where}: {stmt}: {type(exc).__name__}: {exc}")
print(json.dumps(failed))
"""


def test_the_docs_show_imports():
    assert len(IMPORTS) >= 5, IMPORTS


def test_every_documented_import_works():
    proc = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(IMPORTS), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


# --- links ------------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").strip().lower()
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, seen = set(), {}
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _strip_code(path.read_text(encoding="utf-8"))):
            target = m.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            out.append((_rel(path), target))
    return out


@pytest.mark.parametrize("page,target", _links())
def test_every_relative_link_resolves(page, target):
    source = ROOT / page
    file, _, anchor = target.partition("#")
    resolved = (source.parent / file).resolve() if file else source
    assert resolved.exists(), f"{page} links {target}: {resolved} does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{page} links {target}: no such heading in {resolved.name}"


# --- the front door ---------------------------------------------------------------------------------------


def test_the_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move text to docs/"


SECTIONS = ("guides", "reference", "benchmarks")  # docs/SECTION/README.md lists its pages; docs/contributing.md beside


def _linked_from(page: Path) -> set[Path]:
    return {(page.parent / t.partition("#")[0]).resolve() for p, t in _links() if p == _rel(page)}


def test_the_readme_links_every_docs_section():
    """The README's table of contents points to the four sections (not every page: each section's index does that)."""
    sections = [ROOT / "docs" / s / "README.md" for s in SECTIONS] + [ROOT / "docs" / "contributing.md"]
    assert all(s.exists() for s in sections), [_rel(s) for s in sections if not s.exists()]
    missing = [_rel(s) for s in sections if s.resolve() not in _linked_from(README)]
    assert not missing, f"README.md's table of contents lacks {missing}"
    loose = [_rel(p) for p in PAGES if p.parent == ROOT / "docs" and p.name != "contributing.md"]
    assert not loose, f"pages outside the sections {SECTIONS}: {loose}"


@pytest.mark.parametrize("section", SECTIONS)
def test_each_section_index_links_every_page_of_its_section(section):
    index = ROOT / "docs" / section / "README.md"
    linked = _linked_from(index)
    missing = [_rel(p) for p in PAGES if p.parent == index.parent and p != index and p.resolve() not in linked]
    assert not missing, f"{_rel(index)} lacks {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[_rel(p) for p in PAGES])
def test_every_page_has_a_title_and_a_summary(page):
    lines = page.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# "), f"{page.name} does not start with a '# Title'"
    at = next((i for i, ln in enumerate(lines[1:], 1) if ln.strip()), None)
    assert at is not None, f"{page.name} has nothing under its title"
    summary = lines[at]
    assert not summary.startswith(("#", "```", "|", "-", "!")), f"{page.name} has no one-line summary under its title"
    assert at + 1 == len(lines) or not lines[at + 1].strip(), f"{page.name}: the summary under the title is one line"


NOT_IN_THE_REPOSITORY = {"edgecompress_device.py", "edgecompress_facts.py", "model.yaml"}  # names shipped to a device; the user's file


def _folder_map() -> str:
    """The code block under docs/reference/architecture.md's "## Folder map"."""
    text = (ROOT / "docs" / "reference" / "architecture.md").read_text(encoding="utf-8")
    return next(code for code, _ in _blocks_of(text[text.index("## Folder map"):]))


def test_the_folder_map_names_files_that_exist():
    """docs/reference/architecture.md's folder map: every file and folder it names exists (the layout moves; the map must follow)."""
    block = _folder_map()
    tree = [p for base in ("compress", "runtimes", "tests", "benchmarks", "profiles", "docs", ".ci")
            for p in (ROOT / base).rglob("*") if "__pycache__" not in p.parts and ".cache" not in p.parts]
    names = {p.name for p in tree} | {p.name + "/" for p in tree if p.is_dir()}
    missing = []
    for line in block.splitlines():
        for name in re.findall(r"(?<![\w./-])([\w-]+(?:\.py|\.yaml|\.j2|/))(?![\w])", line):
            if name.endswith("/") and name[:-1] in ("compress", "runtimes", "tests", "benchmarks", "profiles", "docs"):
                continue
            if name not in names and name not in NOT_IN_THE_REPOSITORY:
                missing.append(name)
    assert not missing, f"docs/reference/architecture.md's folder map names what does not exist: {sorted(set(missing))}"


def _blocks_of(markdown: str):
    for m in FENCE.finditer(markdown):
        yield m.group(3), m.start(3)


ENTRY_INDENT = 16  # a map line whose first name starts left of this column is an entry (a folder or a file), not
#                    the continued description of the line above


def mapped_modules(block: str) -> set[str]:
    """The paths of the ``.py`` files the folder map names, each by its file name in its folder's lines: on the line of
    the folder (``quantize/  onnxruntime.py (+ graph.py)``, continued lines included), or as an entry of its own
    under that folder (``  artifact.py  the artifact ...``); a name with a folder (``bundle_template/handler.py``)
    is relative to the folder of the line that names it."""
    named: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, folder path): the folders enclosing the current line
    here = ""  # the folder whose line this is (a file entry's: the folder it sits in)
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if not text:
            continue
        if indent < ENTRY_INDENT:
            entry, _, text = text.partition(" ")
            while stack and stack[-1][0] >= indent:
                stack.pop()
            parent = stack[-1][1] if stack else ""
            if entry.endswith("/"):
                here = parent + entry
                stack.append((indent, here))
            else:
                here = parent
                named.add(parent + entry)
        named |= {here + name for name in re.findall(r"(?<![\w./-])([\w/-]+\.py)(?![\w])", text)}
    return named


def test_the_folder_map_names_every_module():
    """Every module of the library (a ``.py`` under compress/ or runtimes/, packages' ``__init__.py`` aside) is named in
    docs/reference/architecture.md's folder map, under its folder's line: a module added, moved or renamed updates the map."""
    named = mapped_modules(_folder_map())
    modules = sorted(p.relative_to(ROOT).as_posix() for base in ("compress", "runtimes") for p in (ROOT / base).rglob("*.py")
                     if p.name != "__init__.py" and "__pycache__" not in p.parts)
    missing = [m for m in modules if m not in named]
    assert not missing, f"docs/reference/architecture.md's folder map does not name {missing}"


def test_the_folder_map_reads_a_files_folder_from_its_line():
    block = ("compress/                  the library\n"
             "  artifact.py              the artifact (like runtimes/base.py's table)\n"
             "  stages/                  the verbs\n"
             "    export/                  onnx.py (ONNX), tensorrt.py +\n"
             "                             shapes.py\n"
             "    spec.py                  what each stage accepts\n"
             "  device/                  shipped.py, bundle_template/handler.py\n"
             "runtimes/                  base.py's interface; host.py\n")
    assert mapped_modules(block) == {
        "compress/artifact.py", "compress/runtimes/base.py", "compress/stages/export/onnx.py",
        "compress/stages/export/tensorrt.py", "compress/stages/export/shapes.py", "compress/stages/spec.py",
        "compress/device/shipped.py", "compress/device/bundle_template/handler.py", "runtimes/base.py",
        "runtimes/host.py"}


def test_the_formats_table_names_every_format_and_runtime():
    """docs/reference/architecture.md's "Formats and runtimes" table has a row per format of compress/formats.py and
    names every runtime of runtimes/base.py (a format or runtime added updates the page)."""
    from compress.formats import FORMATS
    from compress.runtimes.base import RUNTIMES

    text = (ROOT / "docs" / "reference" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("## Formats and runtimes"):]
    rows = [ln for ln in section[: section.index("\n## ", 1)].splitlines() if ln.startswith("| `")]
    cells = [[c.strip().strip("`") for c in row.strip("|").split("|")] for row in rows]
    assert [c[0] for c in cells] == list(FORMATS), "one row per format, in compress/formats.py's order"
    assert [c[2] for c in cells] == [spec.runtime for spec in FORMATS.values()]
    assert set(RUNTIMES) <= {c[2] for c in cells}, f"runtimes without a format row: {set(RUNTIMES) - {c[2] for c in cells}}"
