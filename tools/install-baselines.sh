#!/bin/sh
# Install the command-line encoders used by rdeic_codec/evaluation/baselines.py
# (Debian/Ubuntu). Idempotent: installs only the packages whose tools are missing.
#   webp          -> cwebp, dwebp
#   libavif-bin   -> avifenc, avifdec
#   libjxl-tools  -> cjxl, djxl
# JPEG needs no package: it is encoded with Pillow.
set -eu

missing=""
need() {  # need PACKAGE TOOL...: queue PACKAGE unless all its TOOLs are on PATH
    pkg=$1; shift
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "install-baselines: $tool not found -> will install $pkg"
            missing="$missing $pkg"
            return
        fi
    done
    echo "install-baselines: $pkg already present ($*)"
}

need webp cwebp dwebp
need libavif-bin avifenc avifdec
need libjxl-tools cjxl djxl

if [ -z "$missing" ]; then
    echo "install-baselines: nothing to do"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-baselines: must run as root (or have sudo) to install:$missing" >&2
        exit 1
    fi
fi

echo "install-baselines: apt-get update"
$SUDO apt-get update
echo "install-baselines: apt-get install -y --no-install-recommends$missing"
# shellcheck disable=SC2086  # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $missing
