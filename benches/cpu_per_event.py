#!/usr/bin/env python3
"""CPU per accepted event, per thread of a server and for the load generator.

Usage: cpu_per_event.py SERVER_PID -- LOAD_COMMAND...

Reads utime+stime of every thread of SERVER_PID (grouped by thread name)
before and after LOAD_COMMAND, which must print `accepted N in ...` (as
examples/ingest_load does), and the load command's own CPU (rusage of the
child). Prints the load command's line, then one line per thread group with
CPU microseconds per accepted event, the server's total and the load
generator's. benches/ingest.sh uses it to say how far the store is from the
floor in CPU, which on a machine whose cores are all busy is the rate.
"""
import os
import re
import subprocess
import sys

TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")


def threads(pid):
    """{thread name: ticks} summed over the threads of pid."""
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue  # ended between the listing and the read
        # The name is in parentheses and may hold spaces; fields follow it.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
    return ticks


def main():
    split = sys.argv.index("--")
    pid = int(sys.argv[1])
    command = sys.argv[split + 1 :]
    before = threads(pid)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    after = threads(pid)
    if status != 0:
        sys.exit(f"the load command failed: {status}")
    print(output.strip())
    accepted = int(re.search(r"accepted (\d+)", output).group(1))
    if accepted == 0:
        sys.exit("nothing was accepted")
    per_event = lambda ticks: ticks * TICK_US / accepted
    total = 0
    for name in sorted(after, key=lambda n: -(after[n] - before.get(n, 0))):
        used = after[name] - before.get(name, 0)
        total += used
        if used > 0:
            print(f"  server thread {name}: {per_event(used):.1f} us/event")
    loadgen_us = (usage.ru_utime + usage.ru_stime) * 1e6 / accepted
    print(f"  server total: {per_event(total):.1f} us/event")
    print(f"  load generator: {loadgen_us:.1f} us/event")


main()
