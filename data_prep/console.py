"""Keeping Caffe's own output off the user's console: `output_to_log` sends this process's file
descriptors 1 and 2 (pycaffe's glog lines, the nets it prints) to a log file for the duration.
The one owner of the idiom (tools/ imports it from here)."""
import contextlib
import os
import sys


@contextlib.contextmanager
def output_to_log(log_path, verbose=False):
    """Sends this process's stdout and stderr (file descriptors 1 and 2: pycaffe's glog lines,
    the nets it prints) to `log_path` (appended) for the duration; with verbose=True the console
    keeps them. Python's own prints inside are sent there too."""
    if verbose:
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
