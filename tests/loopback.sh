#!/usr/bin/env bash
# Run a command inside a fresh network namespace that has only the loopback interface.
# Ray and gloo bind the machine's non-loopback address even when told 127.0.0.1; inside this namespace
# there is no such address, so tests cannot send traffic anywhere but loopback.
# Without permission for `unshare -n` (not root, no user namespaces) it runs the command with
# RLFT_NO_NETNS=1, and tests marked `dist` skip themselves.
set -euo pipefail
if unshare -n true 2>/dev/null; then
  exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
fi
echo "tests/loopback.sh: cannot create a network namespace; distributed tests will be skipped" >&2
RLFT_NO_NETNS=1 exec "$@"
