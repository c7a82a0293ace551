"""Resource types. Importing this package registers every built-in type."""

from reconciler.resources import (  # noqa: F401
    artifact,
    directory,
    exec,
    file,
    group,
    line,
    mount,
    package,
    service,
    ssh_authorized_key,
    symlink,
    user,
)
