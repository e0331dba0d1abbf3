"""The one exception type for errors a user can cause and fix."""


class ImgclfError(Exception):
    """A problem with the user's input, data or environment.

    The message says what is wrong and what to do about it; entry points print it without a
    traceback and exit with status 2.
    """


def user_error(exc: BaseException) -> ImgclfError | None:
    """The :class:`ImgclfError` behind ``exc``, if any: OmegaConf wraps what a config resolver
    raises (``${imgclf.crop_size:...}`` on a backbone that does not exist) in its own errors."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ImgclfError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
