"""The errors a run reports to its user as one line (the command line prints them as ``error: ...``, exit 2)."""


class SetupError(ValueError):
    """A run cannot start: bad config, unusable data or run directory. The message is one line naming the fix."""


class ConfigError(SetupError):
    """A bad config or override; the message is one line naming the key and the fix."""


class RunDirError(SetupError):
    """The run directory cannot be used as asked (exists without --resume, or holds another run)."""
