"""The one exception type whose message is shown to users as-is."""


class SlimserveError(Exception):
    """A problem the user can fix: the message is one line and names the fix.

    The CLI prints it without a traceback and exits non-zero; anything else that
    escapes is a bug and keeps its traceback.
    """
