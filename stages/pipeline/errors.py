"""The one error type a stage reports to the user: a message naming the file, key or value at fault."""


class PipelineError(Exception):
    """Bad params, bad data or a bad artifact. Stages print the message and exit non-zero."""


class ParamsError(PipelineError):
    pass


class DataError(PipelineError):
    pass
