"""The pipeline's one exception type, and how a command reports it.

Every command in tools/ is a thin `main()` that parses its arguments and runs its library call
through `run_command`: bad input (a PipelineError, a DataPrepError, a ValueError or KeyError
raised on a value the user gave, or an OSError such as a full disk or a read-only folder) prints
`<command>: error: <message>` on stderr and exits with status 2, the documented status for bad
input; Ctrl-C exits with 130 and a one-line message; nothing else is caught.
"""
from data_prep.errors import DataPrepError, run_cli


class PipelineError(RuntimeError):
    """Bad input to a stage of the pipeline, or a stage that failed: the message names the file,
    record or argument and what to do."""


def run_command(prog, call):
    """Runs `call()`; returns 0, 2 after printing a bad-input error (also an OSError: a full disk,
    a read-only folder), or 130 after Ctrl-C (data_prep.errors.run_cli)."""
    return run_cli(prog, call, errors=(PipelineError, DataPrepError, ValueError, KeyError))
