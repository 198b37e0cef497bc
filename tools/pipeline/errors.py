"""The pipeline's one exception type, and how a command reports it.

Every command in tools/ is a thin `main()` that parses its arguments and runs its library call
through `run_command`: bad input (a PipelineError, a DataPrepError, a ValueError or KeyError
raised on a value the user gave) prints `<command>: error: <message>` on stderr and exits with
status 2, the documented status for bad input; nothing else is caught.
"""
import sys

from data_prep.errors import DataPrepError


class PipelineError(RuntimeError):
    """Bad input to a stage of the pipeline, or a stage that failed: the message names the file,
    record or argument and what to do."""


def run_command(prog, call):
    """Runs `call()`; returns 0, or 2 after printing a bad-input error."""
    try:
        call()
        return 0
    except (PipelineError, DataPrepError, ValueError, KeyError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
