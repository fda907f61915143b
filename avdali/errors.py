"""User-facing errors. Library code raises these with one line that names the file and the problem;
only the CLI turns them into a red message and a non-zero exit code."""


class AvdaliError(Exception):
    """A problem the user can fix (bad input, bad option, missing file). The message is one line."""


class ConfigError(AvdaliError):
    """A config key, type or value that is not valid; the message names the key and the choices."""
