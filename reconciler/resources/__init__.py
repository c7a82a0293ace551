"""Resource types. Importing this package registers every built-in type."""

from reconciler.resources import directory, exec, file, group, line, symlink, user  # noqa: F401
