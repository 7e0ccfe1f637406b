"""The one exception type for user mistakes.

Anything raised as `UserError` is printed by the CLI as a single line
(`kobert-pretrain: error: ...`) with no traceback; everything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix: bad input, bad config, a path that is missing."""


class ConfigError(UserError):
    """One or more invalid config values; all of them are listed in the message."""

    def __init__(self, problems: list[str], title: str = "invalid config"):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"{title}: {self.problems[0]}"
        else:
            message = f"{title} ({len(self.problems)} problems): " + "; ".join(self.problems)
        super().__init__(message)


class TrainingDiverged(UserError):
    """Training kept producing non-finite gradients; restarting from a checkpoint unchanged would not help."""
