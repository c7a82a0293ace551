#!/bin/sh
# Installs the reconciler agent on this node (docs/daemon.md, "Installing on a node"):
#   /opt/reconciler/                          a virtual environment of its own, with reconciler
#   /opt/reconciler/share/doc/reconciler/     README.md, docs/*.md, config.example.yaml
#   /usr/local/bin/reconciler                 a link to /opt/reconciler/bin/reconciler
#   /etc/systemd/system/reconciler.service    the unit
#   /etc/reconciler/                          for the configuration (mode 0700); `reconciler init`
#                                             writes it
#
# usage: deploy/install.sh [--root DIR] [--no-deps] [PACKAGE]
#   PACKAGE    what pip installs: a wheel, a checkout (default: the one this script is in)
#   --root DIR install into DIR as if it were / (an image being built, a test); nothing is
#              started, and the scripts of the environment name /opt/reconciler/bin/python
#   --no-deps  do not install reconciler's dependencies (they must be there already)
# Running it again upgrades reconciler and the unit and keeps the configuration.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
root=/
package=$here
no_deps=
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --no-deps) no_deps=--no-deps; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    *) package=$1; shift ;;
  esac
done
root=${root%/}
if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: installing on this node needs root (sudo $0), or --root DIR" >&2
  exit 1
fi

prefix=/opt/reconciler
venv=$root$prefix
docs=$venv/share/doc/reconciler
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" || {
    echo "install.sh: $python cannot make a virtual environment:" \
      "apt-get install python3-venv" >&2
    exit 1
  }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade $no_deps \
  "$package"
if [ -n "$root" ]; then
  # The environment is at $venv now and at $prefix once $root is the node's /.
  for script in "$venv"/bin/*; do
    if [ -f "$script" ] && [ ! -L "$script" ] && grep -q "$venv" "$script"; then
      sed -i "s|$venv|$prefix|g" "$script"
    fi
  done
fi

install -d -m 0755 "$docs"
install -m 0644 "$here/README.md" "$here/config.example.yaml" "$here"/docs/*.md "$docs/"
install -d -m 0755 "$root/usr/local/bin"
ln -sfn "$prefix/bin/reconciler" "$root/usr/local/bin/reconciler"
install -D -m 0644 "$here/deploy/systemd/reconciler.service" \
  "$root/etc/systemd/system/reconciler.service"
install -d -m 0700 "$root/etc/reconciler"

version=$("$venv/bin/python" -c 'import reconciler; print(reconciler.__version__)')
echo "installed reconciler $version in $root$prefix"
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
if [ ! -e "$root/etc/reconciler/config.yaml" ]; then
  echo "next: reconciler init --repo URL --node NAME    (writes /etc/reconciler/config.yaml)"
fi
echo "then: systemctl enable --now reconciler"
