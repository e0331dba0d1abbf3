"""The one exception type for errors a user can cause and fix."""


class ImgclfError(Exception):
    """A problem with the user's input, data or environment.

    The message says what is wrong and what to do about it; entry points print it without a
    traceback and exit with status 2.
    """
