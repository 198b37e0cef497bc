"""The one exception type of data_prep: bad input, named with what to do about it."""


class DataPrepError(Exception):
    """Bad input or inconsistent outputs. The message names the file/record and the fix."""
