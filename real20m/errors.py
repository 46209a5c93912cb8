"""The one base class of the errors that mean "the user's input is wrong".

Each such error keeps the built-in base it always had (``ValueError``, ``OSError``, ...), so code
that catches the built-in still catches it; the entry points catch ``InputError`` alone and turn
it into one line (``real20m.utils.entry``). The message names the file, option or value at fault
and what to do, so a traceback would add nothing.
"""


class InputError(Exception):
    """A file, folder, option or value given by the user that cannot be used; the message says why."""
