"""The errors a user can cause, as main prints them: one line starting with `error:`, no traceback.

Only what is raised deliberately for the user is a UserError (or a subclass: a mesh that does not fit, a dataset
not prepared, a checkpoint that cannot be read, ...); any other exception is a bug of imagen_jax and keeps its
traceback. File-system errors of the user's paths (a full disk, a read-only or unwritable folder, a name too long)
are the user's too: os_error_line gives their one line.
"""

import errno

# OSError numbers that say something about the user's paths or machine, not about imagen_jax's code.
USER_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENAMETOOLONG,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ELOOP,
        errno.EMFILE,
    }
)


class UserError(ValueError):
    """Bad input from the user: printed as one line, no traceback."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (a config key, a flag) does not exist."""


def is_user_os_error(err: BaseException) -> bool:
    """Whether `err` is a file-system error of the user's paths or machine (see USER_ERRNOS)."""
    return isinstance(err, OSError) and err.errno in USER_ERRNOS


def os_error_line(err: OSError, action: str = "write") -> str:
    """'cannot <action> <path>: <reason>' for an OSError (the path it names, its strerror)."""
    path = err.filename if err.filename is not None else "a file"
    if err.filename2 is not None:
        path = f"{path} -> {err.filename2}"
    reason = err.strerror or str(err)
    return f"cannot {action} {path}: {reason}"
