#!/usr/bin/env python3
"""The networking adapter's costs, measured end to end with the real docker CLI, the real
dockerd and the host's Open vSwitch (a bridge of the benchmark's own, removed at the end):

- first ping: from `docker start` returning (through the proxy, whose post-hook plumbs) to
  the first answered ping over the overlay, from a container already on the network that
  pings every 10 ms; p50/p99 over 50 containers;
- `docker run -d` latency: directly, through the proxy without a network label, and with
  one (the adapter's whole cost: reservation, labels, plumbing), interleaved, 30 each;
- TCP throughput between two containers (busybox nc, 256 MiB from dd): over the overlay
  and over Docker's own bridge, on this machine.

    python3 benches/net_ovs.py          # ~3 minutes, as root; writes benches/results/net-ovs.md

Needs: dockerd with busybox:local (scripts/ensure-docker), Open vSwitch (scripts/ensure-ovs).
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIRECT = "unix:///var/run/docker.sock"
IMAGE = "busybox:local"
BRIDGE = "psbench0"


def sh(*args, host=DIRECT, check=True, capture=True):
    out = subprocess.run(
        ["docker", "-H", host, *args],
        capture_output=capture,
        text=True,
        check=False,
    )
    if check and out.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)}: {out.stderr}")
    return out.stdout.strip()


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def start_proxy(work):
    config = os.path.join(work, "adapters.toml")
    with open(config, "w") as f:
        f.write(
            f"""version = 1
[adapters]
net = {{ builtin = "net-ovs", bridge = "{BRIDGE}", networks = {{ blue = "10.70.0.0/24" }} }}

[[endpoints]]
match = "POST /*/containers/create"
pre = ["net"]
post = ["net"]

[[endpoints]]
match = "POST /*/containers/*/start"
post = ["net"]

[[endpoints]]
match = "DELETE /*/containers/*"
pre = ["net"]
post = ["net"]
"""
        )
    socket = os.path.join(work, "p.sock")
    log = open(os.path.join(work, "proxy.log"), "w")
    proc = subprocess.Popen(
        [
            os.path.join(REPO, "target/release/powerstrip"),
            "serve",
            "--config", config,
            "--listen", f"unix://{socket}",
            "--state-dir", os.path.join(work, "state"),
            "--admin", "none",
            "--node-name", "bench",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    for _ in range(200):
        if os.path.exists(socket):
            break
        time.sleep(0.05)
    return proc, f"unix://{socket}"


def first_ping(proxy, n=50):
    pinger = sh("run", "-d", "--label", "powerstrip.network=blue", IMAGE, "sleep", "3600", host=proxy)
    samples = []
    try:
        for _ in range(n):
            target = sh("create", "--label", "powerstrip.network=blue", IMAGE, "sleep", "3600", host=proxy)
            ip = sh("inspect", "-f", '{{index .Config.Labels "powerstrip.network.blue.ip"}}', target)
            ping = subprocess.Popen(
                ["docker", "-H", DIRECT, "exec", pinger, "ping", "-i", "0.01", "-w", "5", ip],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            time.sleep(0.2)  # the pinger is sending
            sh("start", target, host=proxy)
            returned = time.perf_counter()
            answered = None
            for line in ping.stdout:
                if "bytes from" in line:
                    answered = time.perf_counter()
                    break
            ping.kill()
            ping.wait()
            sh("rm", "-f", target, host=proxy)
            if answered is None:
                raise SystemExit(f"no answer from {ip} within 5 s")
            samples.append((answered - returned) * 1e3)
    finally:
        sh("rm", "-f", pinger, host=proxy, check=False)
    return samples


def run_latency(proxy, n=30):
    modes = {
        "direct": (DIRECT, []),
        "proxy, no network": (proxy, []),
        "proxy, on blue": (proxy, ["--label", "powerstrip.network=blue"]),
    }
    samples = {mode: [] for mode in modes}
    made = []
    try:
        for _ in range(n):
            for mode, (host, extra) in modes.items():
                started = time.perf_counter()
                made.append((host, sh("run", "-d", *extra, IMAGE, "sleep", "3600", host=host)))
                samples[mode].append((time.perf_counter() - started) * 1e3)
    finally:
        for host, cid in made:
            sh("rm", "-f", cid, host=host, check=False)
    return samples


def busy_seconds():
    """CPU time spent so far, all cores, in seconds (everything but idle and iowait)."""
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def vswitchd_seconds():
    """CPU time ovs-vswitchd has used so far, in seconds (0 when it cannot be found)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if open(f"/proc/{pid}/comm").read().strip() != "ovs-vswitchd":
                continue
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def throughput(proxy, megabytes=256):
    a = sh("run", "-d", "--label", "powerstrip.network=blue", IMAGE, "sleep", "3600", host=proxy)
    b = sh("run", "-d", "--label", "powerstrip.network=blue", IMAGE, "sleep", "3600", host=proxy)
    results = {}
    try:
        overlay = sh("inspect", "-f", '{{index .Config.Labels "powerstrip.network.blue.ip"}}', b)
        bridge = sh("inspect", "-f", "{{.NetworkSettings.IPAddress}}", b)
        for port, (name, ip) in enumerate([("overlay (OVS userspace + veth)", overlay), ("Docker's bridge", bridge)], 5001):
            # busybox nc ends when its stdin does: keep the receiver's open.
            receiver = subprocess.Popen(
                ["docker", "-H", DIRECT, "exec", "-i", b, "sh", "-c", f"nc -l -p {port} | wc -c"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.3)
            started = time.perf_counter()
            cpu0, ovs0 = busy_seconds(), vswitchd_seconds()
            sh("exec", a, "sh", "-c", f"dd if=/dev/zero bs=1M count={megabytes} 2>/dev/null | nc {ip} {port}")
            received = int(receiver.stdout.readline().strip() or 0)
            elapsed = time.perf_counter() - started
            cpu, ovs = busy_seconds() - cpu0, vswitchd_seconds() - ovs0
            receiver.kill()
            receiver.wait()
            if received != megabytes << 20:
                raise SystemExit(f"{name}: received {received} bytes of {megabytes << 20}")
            results[name] = (received / elapsed / 1e6, cpu, ovs)
    finally:
        sh("rm", "-f", a, b, host=proxy, check=False)
    return results


def main():
    if os.geteuid() != 0:
        raise SystemExit("run as root (Open vSwitch, network namespaces)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "powerstrip"], cwd=REPO, check=True)
    work = tempfile.mkdtemp(prefix="psbench")
    proxy_proc, proxy = start_proxy(work)
    try:
        # Warm up: the bridge, the network, image layers.
        for _ in range(3):
            cid = sh("run", "-d", "--label", "powerstrip.network=blue", IMAGE, "true", host=proxy)
            sh("rm", "-f", cid, host=proxy)
        pings = first_ping(proxy)
        runs = run_latency(proxy)
        rates = throughput(proxy)
    finally:
        proxy_proc.terminate()
        proxy_proc.wait()
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", BRIDGE], check=False)
        shutil.rmtree(work, ignore_errors=True)

    p50 = {mode: statistics.median(v) for mode, v in runs.items()}
    p99 = {mode: percentile(v, 0.99) for mode, v in runs.items()}
    added = p50["proxy, on blue"] - p50["proxy, no network"]
    (overlay, overlay_cpu, overlay_ovs), (bridge, bridge_cpu, _) = list(rates.values())
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [
        "# Networking adapter: first ping, `docker run` latency, throughput",
        "",
        f"`python3 benches/net_ovs.py` ({time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores; "
        "release build; Docker 20.10, Open vSwitch userspace datapath — this kernel has no openvswitch module).",
        "",
        "| first ping after `docker start` returns (50 containers) | p50 | p99 | target |",
        "|---|---:|---:|---|",
        f"| over the overlay, from a container pinging every 10 ms | {statistics.median(pings):.1f} ms | {percentile(pings, 0.99):.1f} ms | p99 ≤ 100 ms: {'pass' if percentile(pings, 0.99) <= 100 else 'FAIL'} |",
        "",
        "0 ms means the answer was already there when `docker start` returned: the start "
        "post-hook plumbs the container before Docker's answer is passed on. Pings go out "
        "every 10 ms, so up to 10 ms is the pinger's own interval.",
        "",
        "| `docker run -d` (30 each, interleaved) | p50 | p99 |",
        "|---|---:|---:|",
    ]
    for mode in runs:
        lines.append(f"| {mode} | {p50[mode]:.0f} ms | {p99[mode]:.0f} ms |")
    lines += [
        "",
        f"The adapter adds {added:.0f} ms to `docker run` at p50 (on blue ÷ no network: "
        f"{p50['proxy, on blue'] / p50['proxy, no network']:.2f}); target ≤ 50 ms: {'pass' if added <= 50 else 'FAIL'}.",
        "",
        "| TCP, 256 MiB, container to container (busybox nc) | MB/s | CPU, all cores | of which ovs-vswitchd |",
        "|---|---:|---:|---:|",
    ]
    for name, (rate, cpu_s, ovs_s) in rates.items():
        lines.append(f"| {name} | {rate:.0f} | {cpu_s:.1f} s | {ovs_s:.1f} s |")
    lines += [
        "",
        f"Overlay ÷ Docker's bridge: {overlay / bridge:.2f} in throughput, "
        f"{overlay_cpu / bridge_cpu:.2f} in CPU for the same bytes. On this machine OVS runs "
        "its userspace datapath (the kernel has no openvswitch module): every frame leaves the "
        "kernel for ovs-vswitchd and comes back, 1450 bytes at a time with checksum and "
        "segmentation offloads off (the userspace datapath cannot honour them). That is the "
        f"overlay's cost, and it shows as CPU: ovs-vswitchd alone used {overlay_ovs:.1f} s to "
        "move 256 MiB, on a core of its own, beside the sender and the receiver. With the "
        "kernel datapath the frames stay in the kernel and that column drops to nothing.",
        "",
        "What the throughput column does not show is a general rule: busybox `nc` with `dd` "
        "is what the issue asks for and what every host here has, and on 2 cores it keeps "
        "both paths CPU-bound. Docker's bridge costing more CPU per byte than the overlay is "
        "what this machine measured, run after run; turning bridge-nf-call-iptables off (no "
        "iptables on bridged frames) did not change it, and the cause is not pinned down.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    out = os.path.join(REPO, "benches/results/net-ovs.md")
    with open(out, "w") as f:
        f.write(report)
    with open(out.replace(".md", ".json"), "w") as f:
        json.dump({"first_ping_ms": pings, "run_ms": runs, "throughput_mb_s": rates}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
