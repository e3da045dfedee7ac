"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in the user's input: the message says what was wrong and what is allowed."""


class RunStopped(Exception):
    """A long run stopped on purpose (e.g. a NaN loss): one line on stderr, exit code 1, outputs kept."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def key_path(path: str, name: str) -> str:
    """The dotted config key of ``name`` inside the section at ``path`` ("" is the root): for messages."""
    return f"{path}.{name}" if path else name


def check_choice(name: str, value: str, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise a UserError listing them."""
    if value not in choices:
        raise UserError(f"unknown {name} {value!r}; choose one of: {', '.join(sorted(choices))}")
    return value


def check_range(name: str, value: float, low: float | None = None, high: float | None = None) -> float:
    """Return ``value`` if ``low <= value <= high`` (either bound optional), else raise a UserError:
    "name must be in [low, high], got v", or "must be >= low" / "must be <= high" with one bound."""
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            allowed = f">= {low:g}"
        elif low is None:
            allowed = f"<= {high:g}"
        else:
            allowed = f"in [{low:g}, {high:g}]"
        raise UserError(f"{name} must be {allowed}, got {value:g}")
    return value
