#!/usr/bin/env bash
# The browser the labelling app's test drives: Debian's chromium (playwright's own browser download is not
# used). Installed when missing and this runs as root; otherwise says what to run.
set -euo pipefail
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "browser: installing chromium (apt-get)"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  exit 0
fi
echo "browser: chromium is missing; install it (sudo apt-get install -y chromium) for tests/test_collect_browser.py" >&2
