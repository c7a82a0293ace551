"""Resource types. Importing this package registers every built-in type."""

from reconciler.resources import (  # noqa: F401
    apt_repository,
    artifact,
    directory,
    exec,
    file,
    git,
    group,
    line,
    package,
    service,
    symlink,
    user,
)
