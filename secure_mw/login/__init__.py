"""The built-in password login.

:class:`UsersFile` is its users database: a TOML file (0600) with one ``[users.NAME]`` table
per user, an Argon2id hash each, reloaded when it changes and rewritten atomically by the
``secure-mw users`` command; :class:`PasswordPolicy` is what new passwords must satisfy.
"""

from secure_mw.login.policy import PasswordPolicy, PasswordPolicyError
from secure_mw.login.users import (
    UnknownUserError,
    User,
    UserExistsError,
    UsersFile,
    UsersFileError,
    normalize_username,
)

__all__ = [
    "PasswordPolicy",
    "PasswordPolicyError",
    "UnknownUserError",
    "User",
    "UserExistsError",
    "UsersFile",
    "UsersFileError",
    "normalize_username",
]
