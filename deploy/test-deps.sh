#!/bin/sh
# Installs the Debian packages the tests need (deploy/test-packages.txt, or the list given as
# the first argument) that are missing. As root with apt-get it installs them; otherwise it prints
# the command that does and fails.
set -eu
list="${1:-$(dirname "$0")/test-packages.txt}"
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"  # useradd is in sbin, off a user's PATH
missing=""
while read -r tool package; do
  case "$tool" in '' | '#'*) continue ;; esac
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $package"
done <"$list"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing the Debian packages the tests need:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086 # one word a package
  apt-get install -y -qq $missing >/dev/null
else
  echo "the tests need these Debian packages:$missing" >&2
  echo "install them with:  sudo apt-get install -y$missing" >&2
  exit 1
fi
