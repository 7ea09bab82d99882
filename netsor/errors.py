"""The one exception users see: a malformed program or argument, named at the public boundary."""


class ProgramError(ValueError):
    """A Netsor program, or an argument given to one, is not valid.

    The message names the offending node or argument; it is raised before any numerical work starts.
    """
