"""The small error hierarchy the CLI turns into one line and an exit code.

UserError (exit 2): the input is wrong and the user can fix it.
EdgeError (exit 1): conversion, runtime or parity failed on valid input.
"""
from __future__ import annotations

import contextlib
import errno

# A full disk or a folder that cannot be written: the CLI says so in one line (exit 1). Wrappers
# that turn a library's failures into ConversionError pass these on as they are.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


class EdgeError(Exception):
    """A failure of conversion, a runtime or a parity check (exit code 1)."""

    exit_code = 1


class UserError(EdgeError):
    """Bad input from the user: unknown name, unreadable file, impossible combination (exit 2)."""

    exit_code = 2


class MissingDependencyError(UserError):
    """An optional dependency is not installed; the message names the install command."""

    def __init__(self, package: str, purpose: str, extra: str | None = None):
        install = f"pip install 'edge[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{purpose} needs the Python package '{package}', which is not installed; "
                         f"install it with: {install}")


class ConversionError(EdgeError):
    """An exporter or converter failed."""


class ParityError(EdgeError):
    """An artifact disagrees with the reference model by more than its budget."""


def require(module: str, purpose: str, package: str | None = None, extra: str | None = None):
    """Import an optional heavy dependency, or raise an error that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # a missing package, or one broken by a bad install
        if e.name and not module.startswith(e.name.split(".")[0]) and e.name != module:
            raise MissingDependencyError(e.name.split(".")[0], purpose, extra) from e
        raise MissingDependencyError(package or module.split(".")[0], purpose, extra) from e


@contextlib.contextmanager
def one_line(what: str):
    """Turn any failure inside the block into a one-line ConversionError ("{what}: Type: first
    line"); edge's own errors and a full disk pass through as they are."""
    try:
        yield
    except (UserError, ConversionError):
        raise
    except Exception as e:
        if write_failure(e):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        raise ConversionError(f"{what}: {type(e).__name__}: {first}") from e


def write_failure(e: BaseException) -> bool:
    """Is `e` a full disk or an unwritable folder (not a failure of the conversion itself)?"""
    return isinstance(e, OSError) and e.errno in WRITE_ERRNOS
