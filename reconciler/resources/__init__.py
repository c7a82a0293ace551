"""Resource types. Importing this package registers every built-in type."""

from reconciler.resources import directory, exec, file, line, symlink  # noqa: F401
