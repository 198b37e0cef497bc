"""The one exception type of data_prep (bad input, named with what to do about it), and how every
command of this project reports it (`run_cli`; tools/pipeline/errors.py adds the pipeline's types).
"""
import errno
import sys

BAD_INPUT = 2        # the documented exit status for bad input (and unusable output folders)
INTERRUPTED = 130    # Ctrl-C, as a shell reports SIGINT


class DataPrepError(Exception):
    """Bad input or inconsistent outputs. The message names the file/record and the fix."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a stage stopped by SIGINT) after which the work done so far is kept; the
    message says what was kept and how to go on."""


def _os_error_message(e):
    where = e.filename or "an output"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space there (or choose another --out) and run the command again"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "the folder is not writable: choose another --out, or fix its permissions"
    else:
        fix = "check the path and run the command again"
    return f"{where}: {e.strerror or e}; {fix} (nothing half-written was kept)"


def run_cli(prog, call, errors=(DataPrepError,)):
    """Runs `call()`; returns 0, or prints `<prog>: error: <message>` on stderr and returns 2 for
    bad input (`errors`, and an OSError such as a full disk or a read-only folder), or 130 after
    Ctrl-C. Outputs are written atomically (data_prep/outputs.py), so a failure leaves none
    half-written. Nothing else is caught."""
    try:
        call()
        return 0
    except KeyboardInterrupt as e:
        said = e.args[0] if isinstance(e, Interrupted) and e.args else \
            "nothing half-written was kept: run the same command again to go on"
        print(f"\n{prog}: interrupted (Ctrl-C); {said}", file=sys.stderr)
        return INTERRUPTED
    except OSError as e:
        print(f"{prog}: error: {_os_error_message(e)}", file=sys.stderr)
        return BAD_INPUT
    except errors as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {message}", file=sys.stderr)
        return BAD_INPUT
