"""The errors a stage reports to the user: one line naming the file, key or value at fault.

`cli.run` prints `error: <Kind>: <message>` and exits 2, so a user (and the fault-injection tests) can tell
a typo in params.yaml from a corrupt image, a wrong checkpoint, a full disk or a diverged optimisation.
"""


import os


def env_number(name: str, default: float, meaning: str) -> float:
    """A non-negative number from environment variable `name` (blank or unset: `default`); else a clear error."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number >= 0:  # also rejects nan
        raise PipelineError(f"{name}={value!r}: expected {meaning}")
    return number


class PipelineError(Exception):
    """Bad params, bad data or a bad artifact. Stages print the message and exit non-zero."""


class ParamsError(PipelineError):
    """params.yaml or a stage's command line: unknown key or method, wrong type, impossible or contradictory value."""


class DataError(PipelineError):
    """The dataset's files: unreadable image, empty class, layout, a path leaving its root."""


class ArtifactError(PipelineError):
    """A stage's input artifact: teacher checkpoint, diffusion folder, captions, distilled set, card, resume state."""


class ResourceError(PipelineError):
    """The machine: disk full, out of memory."""


class DivergedError(PipelineError):
    """Non-finite loss or values during optimisation; nothing is saved."""


class NotOptimisedError(PipelineError):
    """An optimisation returned (some of) its input unchanged: images meant to move from their start did not."""
