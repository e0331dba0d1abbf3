"""Read and check the search-terms CSV before anything touches the network or the disk.

Columns (as the original tool documented them): ``search_term, number_imgs, folder_name,
train_val``; the original's code read ``category`` and ``set`` for the last two, and those names
work too. Each row asks for up to ``number_imgs`` images of ``search_term`` in
``{split}/{folder_name}/``. The file is UTF-8 (with or without a byte-order mark) or, failing that,
latin-1, as the original's files were. Every problem is reported as one :class:`SearchTermsError`
naming the file and line, so that a typo is found in a second rather than after a browser has
started.
"""

from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NoReturn

from imgclf.errors import ImgclfError

log = logging.getLogger(__name__)

COLUMNS = ("search_term", "number_imgs", "folder_name", "train_val")
# The original tool's code read these names for the last two columns.
ALIASES = {"category": "folder_name", "set": "train_val"}
SPLITS = ("train", "val", "test")
MAX_FOLDER_NAME = 100

# Letters, digits, "_", "-" and inner dots: never a path separator, a parent reference, a hidden
# name or a character that some file system refuses.
_FOLDER_NAME = re.compile(r"^[^\W_]([\w.-]*[\w-])?$")
PLAIN_NAME_HINT = (
    "use letters, digits, '_' and '-' (no '/', '\\', '..', spaces or leading dot), e.g. hockey_player"
)
_EXAMPLE_NAME = re.compile(r"^[a-z0-9_-]+$")


class SearchTermsError(ImgclfError):
    """The search-terms CSV is missing or malformed."""


@dataclass(frozen=True)
class SearchTerm:
    """One CSV row: collect ``number_imgs`` images of ``search_term`` into ``split/folder_name``."""

    line: int
    search_term: str
    number_imgs: int
    folder_name: str
    split: str


def example_names() -> list[str]:
    """The bundled search-terms files (``imgclf/scrape/examples/NAME.csv``)."""
    folder = resources.files("imgclf.scrape").joinpath("examples")
    if not folder.is_dir():
        return []
    return sorted(f.name.removesuffix(".csv") for f in folder.iterdir() if f.name.endswith(".csv"))


def resolve_searchterms(value: str | Path) -> Path:
    """The CSV to read: a path, or the name of a bundled example such as ``hockey``."""
    path = Path(value)
    if path.is_file():
        return path
    name = str(value)
    if _EXAMPLE_NAME.match(name) and name in example_names():
        return Path(str(resources.files("imgclf.scrape").joinpath("examples", f"{name}.csv")))
    raise SearchTermsError(
        f"search terms file {path} not found; create it with the columns {', '.join(COLUMNS)} "
        "(see docs/scraping.md), pass searchterms=PATH, or use a "
        f"bundled example: searchterms={' or searchterms='.join(example_names())}"
    )


def read_searchterms(path: str | Path) -> list[SearchTerm]:
    """Parse and validate the CSV; raise :class:`SearchTermsError` naming the first bad line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SearchTermsError(f"{path}: cannot read ({exc.strerror}); check the path") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Every byte sequence is latin-1, so this cannot fail; it is what the original's files are.
        text = data.decode("latin-1")
        log.warning("%s is not UTF-8; read it as latin-1 (save it as UTF-8 to silence this)", path)
    reader = csv.reader(text.splitlines())
    try:
        return _read_rows(path, reader)
    except csv.Error as exc:
        _fail(path, max(reader.line_num, 1), f"not valid CSV ({exc})")


def _read_rows(path: Path, reader) -> list[SearchTerm]:
    header = _read_header(path, reader)
    terms: list[SearchTerm] = []
    seen: dict[tuple[str, str, str], int] = {}
    for fields in reader:
        line = reader.line_num
        if not any(field.strip() for field in fields):
            continue
        term = _parse_row(path, line, header, fields)
        key = (term.search_term.casefold(), term.folder_name, term.split)
        if key in seen:
            _fail(
                path,
                line,
                f"repeats line {seen[key]} (same search term, folder and split); merge the two rows",
            )
        seen[key] = line
        terms.append(term)
    if not terms:
        _fail(path, 2, "no rows after the header; add one row per search term")
    return terms


def _fail(path: Path, line: int, problem: str) -> NoReturn:
    raise SearchTermsError(f"{path.name} line {line}: {problem}")


def _read_header(path: Path, reader) -> list[str]:
    for fields in reader:
        if any(field.strip() for field in fields):
            break
    else:
        _fail(path, 1, f"the file is empty; start it with the header {','.join(COLUMNS)}")
    written = [field.strip().lower() for field in fields]
    header = [ALIASES.get(name, name) for name in written]
    line = reader.line_num
    unknown = [name for name in written if name not in COLUMNS and name not in ALIASES]
    if unknown:
        _fail(
            path,
            line,
            f"unknown column {unknown[0]!r}; the columns are {', '.join(COLUMNS)} "
            "(or the original's search_term, number_imgs, category, set)",
        )
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        _fail(path, line, f"missing column {missing[0]!r}; the header must name {', '.join(COLUMNS)}")
    if len(set(header)) != len(header):
        _fail(path, line, "a column is named twice in the header (category is folder_name, set is train_val)")
    return header


def _parse_row(path: Path, line: int, header: list[str], fields: list[str]) -> SearchTerm:
    if len(fields) != len(header):
        _fail(
            path,
            line,
            f"{len(fields)} fields where the header has {len(header)}; quote values that contain commas",
        )
    row = {name: value.strip() for name, value in zip(header, fields)}
    if not row["search_term"]:
        _fail(path, line, "search_term is empty")
    return SearchTerm(
        line=line,
        search_term=row["search_term"],
        number_imgs=_parse_count(path, line, row["number_imgs"]),
        folder_name=_check_folder_name(path, line, row["folder_name"]),
        split=_check_split(path, line, row["train_val"]),
    )


def _parse_count(path: Path, line: int, text: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", text):
        _fail(path, line, f"number_imgs {text!r} is not a whole number; write e.g. 100")
    count = int(text)
    if count < 0:
        _fail(path, line, f"number_imgs {count} is negative; write 0 or more")
    return count


def is_folder_name(name: object) -> bool:
    """A class folder name the dataset can hold, wherever it comes from (the CSV, a metrics.json)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_FOLDER_NAME
        and ".." not in name
        and _FOLDER_NAME.fullmatch(name) is not None
    )


def check_class_name(name: object, source: str) -> str:
    """``name`` when :func:`is_folder_name`; otherwise :class:`ImgclfError` naming ``source``."""
    if not is_folder_name(name):
        raise ImgclfError(f"class {name!r} from {source} is not a plain folder name; {PLAIN_NAME_HINT}")
    return name


def _check_folder_name(path: Path, line: int, name: str) -> str:
    if not name:
        _fail(path, line, "folder_name is empty; name the class folder, e.g. hockey_player")
    if not is_folder_name(name):
        _fail(path, line, f"folder_name {name!r} is not a plain folder name; {PLAIN_NAME_HINT}")
    return name


def _check_split(path: Path, line: int, split: str) -> str:
    if split.lower() not in SPLITS:
        _fail(path, line, f"train_val {split!r} is not a split; use train, val or test")
    return split.lower()
