#!/usr/bin/env python3
"""`make test`'s run phase: every test binary, the e2e suites and the release build, as jobs.

The binaries are built once beforehand (`cargo test --no-run`); this script reads cargo's JSON
messages for their paths, so nothing here takes cargo's build lock and the jobs run side by side
(`--jobs`, longest first), so that no core idles while a job waits on real components (etcd,
kube-apiserver, Cluster API, simulated nodes). On 2 cores the run is CPU-bound
(docs/benchmarks.md): more jobs do not shorten it.

Lanes: the default lane runs every binary. The Cluster API floor lane (CLUSTER_API_VERSION set to
the floor version) runs only what can differ between Cluster API lines (FLOOR below).

Each job's output goes to <logs>/<job>.log and is printed whole when the job fails. Timings go
to <times>/{steps,binaries,tests}.tsv (hack/test-times.sh prints them).

  hack/test-run.py --jobs N --floor VERSION --build-json FILE
                   [--only default|floor] [--no-e2e] [--skip-release] [--filter REGEX]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Test binaries whose behaviour depends on the Cluster API line (package, binary) -> the tests to
# run on the floor lane (libtest name filters; none: every test): the contract and conversion
# checks, the controllers against the core's objects, the real peers beside the core, clusterctl,
# the manager, the chart under the core's RBAC, and the harness starting the core and clusterctl
# of the lane. The rest (machineconfig, talos-api, the simulator, the CLI, unit tests, CRD
# admission, the watch caches, the OTLP export, the harness's process handling) cannot differ
# between lines and runs in the default lane only.
FLOOR = {
    ("talos-capi-api", "capi_contract"): [],
    ("talos-capi-controller", "bootstrap"): [],
    ("talos-capi-controller", "bootstrap_scale"): [],
    ("talos-capi-controller", "cabpt"): [],
    ("talos-capi-controller", "cacppt"): [],
    ("talos-capi-controller", "controlplane"): [],
    # Claims against the core's IPAddressClaim/IPAddress and the in-cluster IPAM provider.
    ("talos-capi-controller", "ipam"): [],
    ("talos-capi", "chart"): [],
    ("talos-capi", "clusterctl"): [],
    # The manager's discovery of the core's CRDs and its watch-filter sharding; its fault
    # tests (429 storms, 500s, an etcd restart, leader election) are about kube-apiserver.
    ("talos-capi", "manager"): ["without_the_crds", "split_providers"],
    ("testkit", "harness"): ["cluster_api", "clusterctl_matches_the_core_manager_version"],
    # The in-cluster IPAM provider against the core's IPAddressClaim/IPAddress CRDs, and the
    # per-machine value syntax through the lane's clusterctl.
    ("testkit", "ipam"): [],
    ("testkit", "tools"): [],
}

# Seconds each job took in a reference run (docs/benchmarks.md), to start the longest first;
# a job not listed counts as 30 s. Only the order depends on these.
WEIGHTS = {
    # The release-ci profile: about 80 CPU-s with the dependencies cached.
    "release-binary": 100,
    "controlplane": 900,
    "cacppt": 600,
    "e2e-faults": 420,
    "demo-static-addresses": 120,
    "e2e": 300,
    "hostile_api": 150,
    "manager": 150,
    "bootstrap": 150,
    "bootstrap_scale": 120,
    "ipam": 150,
    "cabpt": 150,
    "clusterctl": 100,
    "chart": 100,
}


class Job:
    def __init__(self, lane, name, argv, cwd=ROOT, env=None, libtest=False):
        self.lane, self.name, self.argv = lane, name, argv
        self.cwd, self.env, self.libtest = cwd, env or {}, libtest
        self.label = f"{lane}/{name}"
        self.weight = WEIGHTS.get(name.rsplit("::", 1)[-1], 30)


def test_binaries(build_json):
    """(package, binary name, path, package dir) of every test executable cargo reported."""
    found = []
    for line in Path(build_json).read_text().splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg.get("profile", {}).get("test"):
            continue
        kind = msg["target"]["kind"][0]
        name = {"lib": "unit", "bin": f"unit-{msg['target']['name']}"}.get(kind, msg["target"]["name"])
        found.append((package_name(msg), name, msg["executable"], str(Path(msg["manifest_path"]).parent)))
    return found


def package_name(msg):
    # package_id is "path+file:///…/crates/x#name@0.1.0" or "…/crates/x#0.1.0" (name = dir).
    pid = msg["package_id"]
    if "#" in pid:
        tail = pid.split("#", 1)[1]
        if "@" in tail:
            return tail.split("@", 1)[0]
    return Path(msg["manifest_path"]).parent.name


def plan(args):
    floor_env = {"CLUSTER_API_VERSION": args.floor}
    jobs = []
    e2e_bins = []
    for package, name, exe, cwd in test_binaries(args.build_json):
        if package == "talos-capi-e2e":
            e2e_bins.append(exe)
            continue
        label = f"{package}::{name}"
        jobs.append(Job("default", label, [exe], cwd, libtest=True))
        if (package, name) in FLOOR:
            filters = FLOOR[(package, name)]
            jobs.append(Job("floor", label, [exe, *filters], cwd, floor_env, libtest=True))
    if args.no_e2e:
        return finish(jobs, args)
    if not e2e_bins:
        sys.exit("the build reported no e2e test binary (package talos-capi-e2e)")
    e2e = [str(ROOT / "hack/e2e.sh")]
    e2e_env = {"E2E_TEST_BINS": " ".join(e2e_bins)}
    jobs.append(Job("default", "e2e", e2e + ["target/e2e"],
                    env={**e2e_env, "E2E_ARTIFACTS": "target/e2e-artifacts"}))
    # The floor lane's cluster is also the Talos 1.13 lane's: it boots v1.13.0 on the v1.13
    # contract and upgrades to v1.13.1; the default lane's runs Talos 1.14.
    jobs.append(Job("floor", "e2e", e2e + ["target/e2e-floor"],
                    env={**e2e_env, **floor_env, "E2E_TALOS": "v1.13",
                         "E2E_ARTIFACTS": "target/e2e-floor-artifacts"}))
    jobs.append(Job("default", "e2e-faults", [
        "target/debug/demo", "--talos-capi", "target/debug/talos-capi", "--dir",
        "target/e2e-faults", "--faults", "--kill-seed", os.environ.get("KILL_SEED", "1"),
        "--scan-secrets"]))
    # The demo with every node's address from Cluster API IPAM (docs/ipam.md): it checks the
    # addresses, the talosconfig endpoints and talosctl at each node itself, and fails otherwise.
    jobs.append(Job("default", "demo-static-addresses", [
        "target/debug/demo", "--talos-capi", "target/debug/talos-capi", "--dir",
        "target/demo-static-addresses", "--static-addresses"]))
    if not args.skip_release:
        jobs.append(Job("default", "release-binary", ["make", "--no-print-directory", "release-binary",
                                                           "RELEASE_PROFILE=release-ci"]))
    return finish(jobs, args)


def finish(jobs, args):
    if args.only:
        jobs = [j for j in jobs if j.lane == args.only]
    if args.filter:
        jobs = [j for j in jobs if re.search(args.filter, j.label)]
    return sorted(jobs, key=lambda j: -j.weight)


class Runner:
    def __init__(self, jobs, slots, logs, times):
        self.pending, self.slots = list(jobs), slots
        self.logs, self.times = logs, times
        self.lock = threading.Lock()
        self.failed = []

    def record(self, file, line):
        with self.lock, open(self.times / file, "a") as f:
            f.write(line + "\n")

    def run(self, job):
        log = self.logs / (job.label.replace("/", "__").replace("::", "--") + ".log")
        env = {**os.environ, **job.env}
        argv = list(job.argv)
        if job.libtest:
            # libtest's per-test timing is unstable; RUSTC_BOOTSTRAP lets the stable harness print it.
            env["RUSTC_BOOTSTRAP"] = "1"
            argv += ["-Z", "unstable-options", "--report-time"]
        started = time.monotonic()
        with open(log, "w") as out:
            status = subprocess.call(argv, cwd=job.cwd, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        took = time.monotonic() - started
        self.record("binaries.tsv" if job.libtest else "steps.tsv",
                    f"{took:.1f}\t{job.lane}\t{job.name}" if job.libtest else f"{took:.0f}\t{job.label}")
        if job.libtest:
            for m in re.finditer(r"^test (.+) \.\.\. (?:ok|FAILED) <([0-9.]+)s>$", log.read_text(errors="replace"), re.M):
                self.record("tests.tsv", f"{m.group(2)}\t{job.lane}\t{job.name}::{m.group(1)}")
        with self.lock:
            if status == 0:
                print(f"== {job.label}: ok in {took:.0f} s", flush=True)
            else:
                self.failed.append(job.label)
                print(f"== {job.label}: FAILED (exit {status}) in {took:.0f} s; its output:", flush=True)
                sys.stdout.write(log.read_text(errors="replace"))
                print(f"== end of {job.label}", flush=True)

    def worker(self):
        while True:
            with self.lock:
                if not self.pending:
                    return
                job = self.pending.pop(0)
            self.run(job)

    def start(self):
        threads = [threading.Thread(target=self.worker) for _ in range(self.slots)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return not self.failed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--floor", required=True)
    p.add_argument("--build-json", required=True, help="cargo's JSON messages of the test build")
    p.add_argument("--only", choices=["default", "floor"])
    p.add_argument("--skip-release", action="store_true")
    p.add_argument("--no-e2e", action="store_true", help="test binaries only")
    p.add_argument("--filter", help="only the jobs whose label (lane/package::binary) matches")
    p.add_argument("--logs", default="target/test-logs")
    p.add_argument("--times", default=os.environ.get("TEST_TIMES_DIR", "target/test-times"))
    args = p.parse_args()
    logs, times = ROOT / args.logs, ROOT / args.times
    logs.mkdir(parents=True, exist_ok=True)
    times.mkdir(parents=True, exist_ok=True)
    jobs = plan(args)
    print(f"== {len(jobs)} jobs, {args.jobs} at a time; logs in {args.logs}", flush=True)
    runner = Runner(jobs, args.jobs, logs, times)
    if runner.start():
        return 0
    print("== failed: " + ", ".join(runner.failed), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
