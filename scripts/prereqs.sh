#!/usr/bin/env bash
# Installs what HA-OSCAR's lab, demo and tests need on a Debian/Ubuntu machine
# (iproute2 for namespaces/veth/bridges, nftables for partitions, resource-agents
# for the OCF agents, mon and fping for monitoring), if missing.
set -euo pipefail
missing=()
command -v ip  >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
# Debian's OCF resource agents (Dummy, anything, IPaddr2, Delay) for the
# service tests and the demo.
[ -x /usr/lib/ocf/resource.d/heartbeat/anything ] || missing+=(resource-agents)
# Perl's Time::Period: the period syntax is cross-checked against it.
perl -MTime::Period -e 1 >/dev/null 2>&1 || missing+=(libtime-period-perl)
# Debian's mon: its monitors (tcp.monitor, ...) and alerts (file.alert,
# mail.alert) run unmodified under HA-OSCAR's monitoring, and the monitoring
# benchmark compares against the mon daemon with fping.monitor.
[ -x /usr/lib/mon/alert.d/file.alert ] || missing+=(mon)
command -v fping >/dev/null 2>&1 || missing+=(fping)
# rsync (client and daemon): the replication benchmark's anchor.
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
# Python's HTTP server is the example service of the demo and the tests.
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages are installed for their programs only: their daemons (mon)
    # must not be started on this machine.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        apt-get install -y -q "${missing[@]}" >/dev/null
    }
fi
