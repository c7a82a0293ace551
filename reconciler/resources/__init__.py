"""Resource types. Importing this package registers every built-in type."""

from reconciler.resources import (  # noqa: F401
    artifact,
    cron,
    directory,
    exec,
    file,
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
