"""Resource types. Importing this package registers every built-in type."""

from reconciler.resources import (  # noqa: F401
    apt_repository,
    artifact,
    cron,
    directory,
    exec,
    file,
    git,
    group,
    host,
    line,
    mount,
    nftables,
    package,
    service,
    ssh_authorized_key,
    symlink,
    sysctl,
    systemd_unit,
    user,
)
