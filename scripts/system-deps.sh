#!/usr/bin/env bash
# The system parts the test suite drives for real: a CNCF Distribution registry (Debian's
# docker-registry) for pulls and pushes, Chromium (+ chromedriver) for the web page. Installed
# with apt when this user is root or has password-less sudo; otherwise the run stops here with
# one line naming the packages, so no test fails or skips for a missing part.
set -euo pipefail
need=()
command -v docker-registry >/dev/null 2>&1 || [[ -x /usr/bin/docker-registry ]] || need+=(docker-registry)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[[ ${#need[@]} -eq 0 ]] && exit 0

if [[ "$(id -u)" -eq 0 ]]; then SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n)
else
    echo "make test needs the system packages ${need[*]}: install them (sudo apt-get install -y ${need[*]}) and run it again" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "make test needs ${need[*]} (no apt-get here: install them with this system's package manager)" >&2
    exit 1
fi
echo "installing system packages for the tests: ${need[*]}"
"${SUDO[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need[@]}"
