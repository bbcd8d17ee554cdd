"""Shared CLI plumbing: one-line errors with exit code 2, progress bars, output helpers."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Sequence

import typer

from gazenlq.errors import GazeNLQError, GazeNLQWarning, ParameterError

try:  # typer >= 0.24 vendors its own click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on the real click
    from click.exceptions import ClickException, NoArgsIsHelpError



def _print_version(value: bool) -> None:
    if value:
        from gazenlq import __version__

        print(f"gazenlq {__version__}")
        raise typer.Exit()


VERSION_OPTION = typer.Option("--version", callback=_print_version, is_eager=True,
                              help="Print gazenlq's version and exit.")
"""Every command's ``--version`` (add ``version: Annotated[bool, VERSION_OPTION] = False``)."""


def flag_for(exc: ParameterError, flags: dict[str, str] | None = None) -> str:
    """The library error as the CLI's words: ``window=100: ...`` -> ``--window 100: ...``
    (``flags`` maps parameters whose option or argument is named otherwise)."""
    name = (flags or {}).get(exc.param, f"--{exc.param.replace('_', '-')}")
    value = repr(exc.value) if isinstance(exc.value, str) else exc.value
    return f"{name} {value}: {exc.expected}"


def make_app(help: str) -> typer.Typer:
    """A Typer app configured like every gazenlq command (no rich tracebacks, no completion)."""
    return typer.Typer(help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_enable=False, rich_markup_mode=None)


INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """gazenlq's warnings as one ``warning: ...`` line on stderr; others as Python shows
    them."""
    if issubclass(category, GazeNLQWarning):
        print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def _interrupted() -> None:
    """Ctrl-C: one line and exit code 130 (every writer is atomic or resumable)."""
    print("interrupted; run again to resume", file=sys.stderr)
    raise SystemExit(INTERRUPTED) from None


def os_error_line(exc: OSError) -> str:
    """``PATH: what went wrong`` for an operating-system error (ENOSPC: disk full)."""
    where = exc.filename if exc.filename is not None else "a file"
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        what += " (disk full or file size limit; nothing was left half-written)"
    return f"{where}: {what}"


def fail(message: str) -> None:
    """Print ``error: message`` as one line on stderr and exit 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


def run(app: typer.Typer, prog_name: str, argv: Sequence[str] | None = None,
        flags: dict[str, str] | None = None, *, fast_exit: bool = False) -> None:
    """Run ``app``; user errors and usage errors become one line on stderr and exit code 2
    (library parameter errors name the option: ``flags`` maps parameter -> option). The
    output is flushed as soon as the command returns.

    ``fast_exit`` (a console script, ``argv`` None): a successful run ends the process
    right after flushing, skipping the interpreter's finalisation, which tears down Numba's
    LLVM and ONNX Runtime objects for about 0.3 s after the answer is printed; every file
    the command writes is published (renamed into place) before it returns.

    Zarr reads run on an asyncio loop: when one chunk read fails, its sibling reads may
    still be pending at exit, and asyncio would then log "Task was destroyed but it is
    pending!" under the one-line error. Those internals are muted here (asyncio logs only
    critical messages)."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    command = typer.main.get_command(app)
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        rv = command.main(args=list(argv) if argv is not None else None, prog_name=prog_name,
                          standalone_mode=False)
    except NoArgsIsHelpError as exc:
        print(exc.format_message(), file=sys.stderr)
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        _interrupted()
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except ClickException as exc:
        fail(f"{prog_name}: {exc.format_message()}")
    except ParameterError as exc:
        fail(flag_for(exc, flags))
    except GazeNLQError as exc:
        fail(str(exc))
    except BrokenPipeError:
        raise SystemExit(0) from None
    except OSError as exc:  # a full disk, a read-only or vanished directory: name the path
        fail(os_error_line(exc))
    finally:
        warnings.showwarning = shown
    if rv == INTERRUPTED:  # typer turns Ctrl-C into Exit(130), which click returns
        _interrupted()
    if isinstance(rv, int) and rv:
        raise SystemExit(rv)
    sys.stdout.flush()
    if fast_exit and argv is None:
        sys.stderr.flush()
        os._exit(0)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print rows as an aligned plain-text table on stdout."""
    text = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) if text else len(c)
              for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in text:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)


def _json_default(o: object) -> object:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
