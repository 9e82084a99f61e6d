"""The embedded default corpus: the Python standard library every machine has.

* ``code``: the stdlib's ``.py`` files, one document per file.
* ``prose``: English prose from the same files, one document per docstring (module, class,
  function) and per block of consecutive full-line ``#`` comments.

Files are read in sorted order, so the corpus is deterministic for a given Python install;
``max_bytes`` caps each kind (UTF-8 bytes of text), keeping the default run small.
"""

from __future__ import annotations

import ast
import sysconfig
import tokenize
from collections.abc import Iterator
from pathlib import Path

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "idlelib", "lib2to3", "turtledemo"}
_TEST_DIRS = {"test", "tests", "idle_test"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(include_tests: bool = False) -> list[Path]:
    """The stdlib's Python files, sorted by relative path."""
    root = stdlib_root()
    skip = _SKIP_DIRS if include_tests else _SKIP_DIRS | _TEST_DIRS
    files = []
    for path in root.rglob("*.py"):
        parts = set(path.relative_to(root).parts[:-1])
        if not parts & skip:
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def prose_blocks(source: str, min_chars: int) -> list[str]:
    """Docstrings and comment blocks of a Python source, in file order, each >= min_chars."""
    blocks: list[tuple[int, str]] = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        tree = None
    stack = [tree] if tree is not None else []
    while stack:  # statements only: docstrings never live inside expressions
        node = stack.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                blocks.append((getattr(node, "lineno", 0), doc))
        for attr in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(n for n in getattr(node, attr, ()) if isinstance(n, ast.AST))
    current: list[str] = []
    start = 0
    for lineno, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("#!"):
            if not current:
                start = lineno
            text = stripped.lstrip("#").strip()
            if text:
                current.append(text)
            continue
        if current:
            blocks.append((start, " ".join(current)))
            current = []
    blocks.sort(key=lambda b: b[0])
    return [text for _, text in blocks if len(text) >= min_chars]


def iter_rows(kind: str, params) -> Iterator[dict]:
    """Rows ``{"text", "_file", "_row"}`` of the ``code`` or ``prose`` corpus, up to max_bytes;
    a file that cannot be read or decoded is a row ``{"_file", "_row": None, "_error"}``."""
    if kind not in ("code", "prose"):
        raise ValueError(f"stdlib corpus kind must be 'code' or 'prose', got {kind!r}")
    budget = params.max_bytes
    used = 0
    root = stdlib_root()
    for path in stdlib_files(params.include_tests):
        rel = path.relative_to(root).as_posix()
        try:
            with tokenize.open(path) as fh:  # the encoding its coding cookie declares (PEP 263)
                source = fh.read()
        except (SyntaxError, UnicodeDecodeError, OSError) as exc:  # a few test fixtures are bad on purpose
            yield {"_file": f"stdlib:{rel}", "_row": None, "_error": f"{type(exc).__name__}: {exc}"}
            continue
        texts = [source] if kind == "code" else prose_blocks(source, params.min_prose_chars)
        for i, text in enumerate(texts):
            size = len(text.encode("utf-8"))
            if budget is not None and used + size > budget:
                return
            used += size
            yield {"text": text, "_file": f"stdlib:{rel}", "_row": i}
