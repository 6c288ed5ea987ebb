"""Validation of TOML/JSON configurations (demo, sweep): every error names the key and what it expected."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

from shibajax.errors import ShibajaxError


class ConfigError(ShibajaxError):
    """A configuration (TOML file or command-line value) that cannot be used."""


def is_number(x) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def number(value, key: str) -> float:
    """``value`` as a float, or ConfigError naming ``key``."""
    if not is_number(value):
        raise ConfigError(f"{key} must be a finite number; got {value!r}")
    return float(value)


def numbers(value, key: str, length: int) -> list[float]:
    """A list of ``length`` numbers, or ConfigError naming ``key``."""
    if not isinstance(value, list) or len(value) != length or not all(is_number(v) for v in value):
        raise ConfigError(f"{key} must be a list of {length} numbers; got {value!r}")
    return [float(v) for v in value]


def positive_int(value, key: str) -> int:
    """A positive integer, or ConfigError naming ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key} must be a positive integer; got {value!r}")
    return int(value)


def check_keys(table, allowed, where: str) -> None:
    """Raise ConfigError naming the first key of ``table`` not in ``allowed`` (``where``: the table's path)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where or 'the config'} must be a table; got {table!r}")
    for key in table:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ConfigError(
                f"unknown config key {name!r}; allowed keys{' in ' + where if where else ''}: "
                f"{', '.join(sorted(allowed))}"
            )


def load_toml(path) -> dict:
    """Read a TOML config file (its content is checked by the caller's ``resolve_config``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config file {str(path)!r}: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        hint = "it looks like UTF-16: save it as UTF-8" if utf16 else "a binary file, or another encoding"
        raise ConfigError(
            f"config file {str(path)!r} is not UTF-8 text as TOML requires (byte {err.start}: {hint})"
        ) from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err


def writable_folder(folder, what: str, option: str = "--out") -> Path:
    """Create ``folder`` and check that files can be written there (a test file is written and removed), before
    any costly work; ``what`` and ``option`` name the output and where it was set, e.g. "the fit output", "--out".

    Raises:
        OutputPathError: naming the folder and the reason (a file of that name, no permission, read-only disk).
    """
    import os

    from shibajax.errors import OutputPathError

    folder = Path(folder)
    probe = folder / f".shibajax-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputPathError(
            f"cannot write {what} to {str(folder)!r} ({option}): {err.strerror or err}; choose a writable folder"
        ) from err
    return folder
