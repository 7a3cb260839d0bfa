#!/bin/sh
# The browser tests' chromium and chromedriver (Debian's packages), installed when either is missing.
set -e
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_chromium.sh: chromium and chromedriver are missing and this user cannot install them;" \
         "ask for: apt-get install -y --no-install-recommends chromium chromium-driver" >&2
    exit 1
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
command -v chromium && command -v chromedriver
