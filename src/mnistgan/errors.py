"""The one exception type that reaches users as a clean error line."""


class UserError(Exception):
    """A problem the user can fix: bad option, bad file, missing data.

    The CLI prints ``mnistgan: error: <message>`` and exits with status 2, without a traceback,
    so the message must name the problem and say what to do about it.
    """
