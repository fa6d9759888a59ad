#!/usr/bin/env bash
# The programs the tests start, installed from Debian's packages when one is
# missing (as root; anyone else is told which packages to install).  Sourced
# by scripts/test.sh, so the README's test command installs what it needs.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # kamailio lives in /usr/sbin

# Program -> the Debian package it comes from.  Add a line when a test starts
# a new kind of process.
declare -A package=(
    [sipp]=sip-tester             # SIP traffic (examples/sipp, tests/integration/scenarios)
    [kamailio]=kamailio           # interop and benchmark reference
    [redis-server]=redis-server   # the Redis store tests start their own on free ports
    [systemd-analyze]=systemd     # tests/test_docs.py verifies contrib/systemd units
    [unshare]=util-linux          # test_roles_side_by_side runs in its own namespaces
    [svmap]=sipvicious            # svmap, svwar, svcrack against the proxy (test_scanners.py)
    [nft]=nftables                # the relay's kernel data plane (libnftables1 with it), test_relay_kernel.py
    [ip]=iproute2                 # network namespaces and veth links (tests/netnskit.py)
    [sysctl]=procps               # per-namespace sysctls: forwarding, the NAT router's conntrack timeouts
    [tshark]=tshark               # reads the flight recorder's pcap files and the HEP3 export (test_hep_export.py, with tests/integration/hep/hep3.lua)
    [chromium]=chromium           # the /calls pages in a real browser (test_call_pages_browser.py)
    [chromedriver]=chromium-driver  # selenium drives that chromium
)
missing=()
for cmd in "${!package[@]}"; do
    command -v "$cmd" >/dev/null || missing+=("${package[$cmd]}")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "scripts/test.sh: the tests need these Debian packages: ${missing[*]} (apt-get install them as root)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' init scripts from starting daemons (kamailio on 5060,
    # redis-server on 6379): the tests start their own on free ports.
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
