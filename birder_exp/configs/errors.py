"""The one error type a run reports as a single line (bad input, never a bug)."""


class ConfigError(ValueError):
    """A configuration or data problem the user can fix; the message names the input and what would be valid."""
