#!/usr/bin/env python3
"""Worker auto-scaling simulation: backlog, instances and time-to-processed under a policy.

Models the worker group of infra/cloudformation/anb.yaml against an upload arrival curve:

* uploads arrive as a Poisson process whose rate follows the scenario's curve;
* each in-service worker transcodes one video at a time (the default concurrency on 2 vCPU), taking
  ``--service-seconds`` per video (60 / 6.6 videos a minute, the worker benchmark's 18 CPU-seconds per 50 MB
  video on 2 vCPU) with some jitter;
* a launched instance counts in GroupInServiceInstances at once but takes ``--boot-seconds`` before it takes
  jobs (image boot, artifact download, unit start);
* CloudWatch sees one datapoint a minute, ``--metric-delay`` seconds late;
* target tracking as EC2 Auto Scaling runs it: scale out when 3 datapoints in a row are above the target, to
  ceil(metric x in-service / target); scale in when 15 in a row are below 90 % of it, never while an instance is
  warming up (``--warmup-seconds``). The chosen policy is two such policies on one group, as in the template:
  backlog (queued + in flight) per worker, and uploads a minute per worker; the group scales out when either asks
  and in only when both agree;
* the seed's policy: simple scaling, +1 instance when more than 10 messages are visible for a minute, -1 when
  10 or fewer are visible for 5 minutes, 300 s cooldown, no lifecycle hook;
* scale-in picks a random instance. With the termination lifecycle hook it stops claiming and finishes its job
  first; without it the encode is killed and its message becomes visible again when its lease runs out
  (``--visibility-seconds``), then is encoded again from the start.

Scenarios: the stress-test burst, a recovery (a backlog left by an outage) and a day's curve.
Writes one PNG per scenario (backlog, instances, time-to-processed over time, one line per policy), a PNG of the
target sweep, and a Markdown table (results.md) into --out.
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------------------------------------- scenarios


def burst_rate(t: float) -> float:
    """Uploads per second in the stress test: 0 -> 24 a minute in 3 minutes, held 5 minutes, then nothing."""
    minute = t / 60
    if minute < 3:
        per_minute = 24 * minute / 3
    elif minute < 8:
        per_minute = 24
    else:
        per_minute = 0
    return per_minute / 60


def day_rate(t: float) -> float:
    """Uploads per second over a day: a night trough, a midday bump and an evening peak (about 2,200 a day)."""
    hour = (t / 3600) % 24

    def bump(centre: float, width: float, height: float) -> float:
        return height * math.exp(-(((hour - centre) / width) ** 2))

    per_minute = 0.2 + bump(13, 2.0, 2.0) + bump(20.5, 1.6, 8.0) + bump(8.5, 1.0, 1.0)
    return per_minute / 60


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    rate: callable
    duration: float  # seconds
    step: float  # simulation step, seconds
    window: tuple[float, float] | None = None  # the part plotted, seconds (None: all)
    initial_backlog: int = 0  # jobs already queued at the start


SCENARIOS = {
    "burst": Scenario("burst", "Stress-test burst (0 -> 24 uploads/min in 3 min, held 5 min)", burst_rate, 45 * 60, 1),
    "recovery": Scenario("recovery", "Recovery: 120 jobs queued by an hour's outage, uploads at 2/min", lambda t: 2 / 60,
                         30 * 60, 1, initial_backlog=120),
    "day": Scenario("day", "A day's uploads, the evening peak (9 uploads/min) plotted", day_rate, 24 * 3600, 2,
                    window=(18 * 3600, 23 * 3600)),
}

# ---------------------------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class Policy:
    name: str
    kind: str  # "target" or "seed"
    target: float = 10.0
    count_in_flight: bool = True
    lifecycle_hook: bool = True
    # A second target-tracking policy on uploads per minute per worker (SQS NumberOfMessagesSent): the group scales
    # out when either policy asks and scales in only when both agree.
    rate_target: float | None = None


@dataclass
class Params:
    service_seconds: float
    service_jitter: float
    boot_seconds: float
    warmup_seconds: float
    metric_delay: float
    visibility_seconds: float
    min_size: int
    max_size: int
    cooldown: float = 300


# ---------------------------------------------------------------------------------------------- simulation


@dataclass
class Instance:
    launched: float
    ready_at: float
    job: float | None = None  # arrival time of the job it encodes
    busy_until: float = 0.0
    draining: bool = False


@dataclass
class Result:
    times: list = field(default_factory=list)
    backlog: list = field(default_factory=list)  # visible + in flight
    visible: list = field(default_factory=list)
    instances: list = field(default_factory=list)  # in service (launched, not terminated)
    serving: list = field(default_factory=list)  # booted and taking jobs
    done_at: list = field(default_factory=list)
    latency: list = field(default_factory=list)
    arrivals: int = 0
    interrupted: int = 0
    launches: int = 0
    instance_seconds: float = 0.0


def simulate(scenario: Scenario, policy: Policy, p: Params, seed: int = 7) -> Result:
    rng = random.Random(seed)
    service_rng = random.Random(seed + 1)
    step = scenario.step
    queue: collections.deque[float] = collections.deque([0.0] * scenario.initial_backlog)  # visible jobs' arrivals
    returning: list[tuple[float, float]] = []  # (visible again at, arrival) of killed jobs
    fleet = [Instance(launched=-3600, ready_at=-3600) for _ in range(p.min_size)]
    desired = p.min_size
    datapoints: list[tuple[float, float, float, float]] = []  # (available at, backlog metric, visible, rate metric)
    sent_this_minute = 0
    last_scaling = -1e9
    result = Result(arrivals=scenario.initial_backlog)
    next_minute = 60.0

    def service_time() -> float:
        sigma = p.service_jitter
        return p.service_seconds * service_rng.lognormvariate(-sigma * sigma / 2, sigma)

    t = 0.0
    while t < scenario.duration:
        # Arrivals (Poisson within the step).
        expected = scenario.rate(t) * step
        arrivals = 0
        limit, product = math.exp(-expected), rng.random()
        while product > limit:
            arrivals += 1
            product *= rng.random()
        for _ in range(arrivals):
            queue.append(t + rng.random() * step)
        result.arrivals += arrivals
        sent_this_minute += arrivals
        # Killed encodes whose lease ran out become visible again.
        for item in [r for r in returning if r[0] <= t]:
            returning.remove(item)
            queue.appendleft(item[1])

        # Workers finish and claim.
        for inst in list(fleet):
            if inst.job is not None and inst.busy_until <= t:
                result.done_at.append(inst.busy_until)
                result.latency.append(inst.busy_until - inst.job)
                inst.job = None
            if inst.draining and inst.job is None:
                fleet.remove(inst)
                continue
            if inst.job is None and not inst.draining and inst.ready_at <= t and queue:
                inst.job = queue.popleft()
                inst.busy_until = max(t, inst.job) + service_time()

        in_flight = sum(1 for i in fleet if i.job is not None) + len(returning)
        counted = [i for i in fleet if not i.draining]
        result.instance_seconds += len(fleet) * step

        # One CloudWatch datapoint a minute, seen metric_delay later.
        if t >= next_minute:
            next_minute += 60
            backlog = len(queue) + (in_flight if policy.count_in_flight else 0)
            metric = backlog / max(len(counted), 1)
            rate = sent_this_minute / max(len(counted), 1)
            sent_this_minute = 0
            datapoints.append((t + p.metric_delay, metric, len(queue), rate))
            seen = [d for d in datapoints if d[0] <= t]
            warming = any(t - i.launched < p.warmup_seconds for i in counted)
            if policy.kind == "target":
                trackers = [(1, policy.target)] + ([(3, policy.rate_target)] if policy.rate_target else [])
                high = seen[-3:]
                low = seen[-15:]
                wanted_out = [math.ceil(high[-1][i] * len(counted) / target) for i, target in trackers
                              if len(high) == 3 and all(d[i] > target for d in high)]
                if wanted_out:
                    desired = max(desired, min(p.max_size, max(wanted_out)))
                elif len(low) == 15 and not warming and all(
                        all(d[i] < 0.9 * target for d in low) for i, target in trackers):
                    wanted = max(math.ceil(low[-1][i] * len(counted) / target) for i, target in trackers)
                    desired = min(desired, max(p.min_size, wanted))
            else:  # the seed: simple scaling on visible messages, with a cooldown
                if t - last_scaling >= p.cooldown and seen:
                    if seen[-1][2] > 10 and desired < p.max_size:
                        desired += 1
                        last_scaling = t
                    elif len(seen) >= 5 and all(d[2] <= 10 for d in seen[-5:]) and desired > p.min_size:
                        desired -= 1
                        last_scaling = t

        # The group converges on the desired capacity.
        counted = [i for i in fleet if not i.draining]
        while len(counted) < desired:
            inst = Instance(launched=t, ready_at=t + p.boot_seconds)
            result.launches += 1
            fleet.append(inst)
            counted.append(inst)
        while len(counted) > desired:
            victim = rng.choice(counted)
            counted.remove(victim)
            if policy.lifecycle_hook:
                victim.draining = True  # finishes its job, claims no more
            else:
                if victim.job is not None:
                    result.interrupted += 1
                    returning.append((t + p.visibility_seconds, victim.job))
                fleet.remove(victim)

        result.times.append(t)
        result.backlog.append(len(queue) + in_flight)
        result.visible.append(len(queue))
        result.instances.append(len(fleet))
        result.serving.append(sum(1 for i in fleet if i.ready_at <= t and not i.draining))
        t += step
    result.unfinished = len(queue) + sum(1 for i in fleet if i.job is not None) + len(returning)
    return result


# ---------------------------------------------------------------------------------------------- reporting


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(r: Result) -> dict:
    return {
        "uploads": r.arrivals,
        "processed": len(r.latency),
        "p50 min": percentile(r.latency, 0.5) / 60,
        "p95 min": percentile(r.latency, 0.95) / 60,
        "max min": max(r.latency, default=float("nan")) / 60,
        "max backlog": max(r.backlog),
        "peak instances": max(r.instances),
        "instance-hours": r.instance_seconds / 3600,
        "launches": r.launches,
        "killed encodes": r.interrupted,
    }


def table(rows: list[tuple[str, str, dict]]) -> str:
    keys = list(rows[0][2].keys())
    lines = ["| scenario | policy | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for scenario, policy, values in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in values.values()]
        lines.append(f"| {scenario} | {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(scenario: Scenario, runs: dict[str, Result], path: Path, dpi: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit, scale = ("h", 3600) if scenario.duration > 6 * 3600 else ("min", 60)
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    start, end = scenario.window or (0, scenario.duration)
    for (label, r), colour in zip(runs.items(), ["tab:blue", "tab:purple", "tab:red", "tab:orange", "tab:green"]):
        keep = [i for i, t in enumerate(r.times) if start <= t <= end]
        r = Result(times=[r.times[i] for i in keep], backlog=[r.backlog[i] for i in keep],
                   instances=[r.instances[i] for i in keep], serving=[r.serving[i] for i in keep],
                   done_at=[d for d in r.done_at if start <= d <= end],
                   latency=[lat for d, lat in zip(r.done_at, r.latency) if start <= d <= end])
        xs = [t / scale for t in r.times]
        axes[0].plot(xs, r.backlog, color=colour, label=label, linewidth=1.0, alpha=0.85)
        axes[1].step(xs, r.instances, color=colour, where="post", label=label, linewidth=1.4)
        axes[1].step(xs, r.serving, color=colour, where="post", linestyle=":", linewidth=1.0)
        done = sorted(zip(r.done_at, r.latency))
        axes[2].plot([d / scale for d, _ in done], [lat / 60 for _, lat in done], ".", color=colour, markersize=2,
                     label=label)
    rate_xs = [t / scale for t in runs[next(iter(runs))].times if start <= t <= end]
    twin = axes[0].twinx()
    twin.plot(rate_xs, [scenario.rate(t * scale) * 60 for t in rate_xs], color="grey", linewidth=0.8, alpha=0.6)
    twin.set_ylabel("uploads / min (grey)")
    twin.set_ylim(bottom=0)
    axes[0].set_ylabel("jobs queued + in flight")
    axes[1].set_ylabel("workers: in service (solid),\nbooted and taking jobs (dotted)", fontsize=8)
    axes[2].set_ylabel("time to processed (min)")
    axes[2].set_xlabel(f"time ({unit}), by completion time in the last panel")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(scenario.title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_sweep(sweeps: dict[str, list[tuple]], path: Path, dpi: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(6 * len(sweeps), 4.5), squeeze=False)
    for left, (xlabel, sweep) in zip(axes[0], sweeps.items()):
        xs = [row[0] for row in sweep]
        left.plot(xs, [row[1]["p95 min"] for row in sweep], "o-", color="tab:blue", label="burst: p95 time to processed")
        left.set_xlabel(xlabel)
        left.set_ylabel("minutes")
        left.set_ylim(bottom=0)
        right = left.twinx()
        if all(row[2] is not None for row in sweep):  # the day (not in --quick)
            left.plot(xs, [row[2]["p95 min"] for row in sweep], "s-", color="tab:purple",
                      label="day: p95 time to processed")
            right.plot(xs, [row[2]["instance-hours"] for row in sweep], "^--", color="tab:green",
                       label="day: instance-hours")
            right.plot(xs, [row[2]["launches"] for row in sweep], "v:", color="tab:grey", label="day: launches")
            left.plot(xs, [row[3]["max min"] for row in sweep], "D-", color="tab:orange",
                      label="recovery: time to drain")
        right.set_ylabel("per day")
        right.set_ylim(bottom=0)
        handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        labels = left.get_legend_handles_labels()[1] + right.get_legend_handles_labels()[1]
        left.legend(handles, labels, fontsize=7, loc="center right")
        left.grid(alpha=0.3)
    fig.suptitle("Target sweeps (the other policy of the pair at its chosen value; lifecycle hook)")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def main() -> None:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=here / "results")
    parser.add_argument("--quick", action="store_true", help="burst only, two targets, small plots (seconds)")
    parser.add_argument("--service-seconds", type=float, default=60 / 6.6,
                        help="seconds per video on one 2-vCPU worker (default: 6.6 videos/min)")
    parser.add_argument("--service-jitter", type=float, default=0.15, help="lognormal sigma of the service time")
    parser.add_argument("--boot-seconds", type=float, default=90, help="launch to taking jobs, from the image")
    parser.add_argument("--seed-boot-seconds", type=float, default=300,
                        help="the same for the seed's boot (packages installed from the mirror at each launch)")
    parser.add_argument("--warmup-seconds", type=float, default=120, help="the group's DefaultInstanceWarmup")
    parser.add_argument("--metric-delay", type=float, default=120, help="how late CloudWatch datapoints arrive")
    parser.add_argument("--visibility-seconds", type=float, default=120, help="lease of a killed encode")
    parser.add_argument("--target", type=float, default=10, help="the chosen backlog target (WorkerBacklogPerInstance)")
    parser.add_argument("--rate-target", type=float, default=5,
                        help="the chosen uploads/min per worker target (WorkerUploadsPerMinutePerInstance)")
    parser.add_argument("--draws", type=int, default=5, help="arrival draws averaged per target in the sweep")
    parser.add_argument("--min-size", type=int, default=1)
    parser.add_argument("--max-size", type=int, default=3)
    args = parser.parse_args()

    p = Params(args.service_seconds, args.service_jitter, args.boot_seconds, args.warmup_seconds, args.metric_delay,
               args.visibility_seconds, args.min_size, args.max_size)
    seed_boot = Params(**{**p.__dict__, "boot_seconds": args.seed_boot_seconds})
    chosen = Policy(f"backlog {args.target:g} + {args.rate_target:g} uploads/min per worker", "target",
                    target=args.target, rate_target=args.rate_target)
    backlog_only = Policy(f"backlog {args.target:g} only", "target", target=args.target)
    seed = Policy("seed: +1 above 10 visible", "seed", count_in_flight=False, lifecycle_hook=False)
    previous = Policy("visible only, target 4, no hook", "target", target=4, count_in_flight=False,
                      lifecycle_hook=False)
    args.out.mkdir(parents=True, exist_ok=True)
    dpi = 60 if args.quick else 110
    names = ["burst"] if args.quick else ["burst", "recovery", "day"]

    rows = []
    for name in names:
        scenario = SCENARIOS[name]
        runs = {
            chosen.name: simulate(scenario, chosen, p),
            backlog_only.name: simulate(scenario, backlog_only, p),
            seed.name + " (image boot)": simulate(scenario, seed, p),
            seed.name + f" ({args.seed_boot_seconds:g} s boot)": simulate(scenario, seed, seed_boot),
            previous.name: simulate(scenario, previous, p),
        }
        for label, r in runs.items():
            rows.append((name, label, summary(r)))
        plot(scenario, runs, args.out / f"{name}.png", dpi)
        # What a larger group would buy, with the chosen policy.
        for max_size in [] if args.quick else [4, 5]:
            bigger = Params(**{**p.__dict__, "max_size": max_size})
            rows.append((name, f"{chosen.name}, max {max_size}", summary(simulate(scenario, chosen, bigger))))

    # The sweep averages several arrival draws, so that a target's figures are not one draw's luck.
    targets = [4, 10] if args.quick else [2, 4, 6, 8, 10, 15, 20, 30]
    draws = range(1) if args.quick else range(args.draws)

    def averaged(scenario: Scenario, policy: Policy) -> dict:
        runs = [summary(simulate(scenario, policy, p, seed=100 + d)) for d in draws]
        return {key: statistics.fmean(run[key] for run in runs) for key in runs[0]}

    backlog_sweep, rate_sweep = [], []
    for target in targets:
        policy = Policy(f"target {target}", "target", target=target, rate_target=args.rate_target)
        burst = averaged(SCENARIOS["burst"], policy)
        day = None if args.quick else averaged(SCENARIOS["day"], policy)
        recovery = None if args.quick else averaged(SCENARIOS["recovery"], policy)
        backlog_sweep.append((target, burst, day, recovery))
    for rate_target in [5] if args.quick else [3, 4, 5, 6, 7, None]:
        policy = Policy(f"rate {rate_target}", "target", target=args.target, rate_target=rate_target)
        burst = averaged(SCENARIOS["burst"], policy)
        day = None if args.quick else averaged(SCENARIOS["day"], policy)
        recovery = None if args.quick else averaged(SCENARIOS["recovery"], policy)
        rate_sweep.append((rate_target, burst, day, recovery))
    plot_sweep({"backlog target (queued + in flight per worker)": backlog_sweep,
                "uploads/min per worker target": [row for row in rate_sweep if row[0] is not None]},
               args.out / "target-sweep.png", dpi)

    text = ["# Worker scaling simulation", "",
            f"Service {p.service_seconds:.1f} s per video (±{p.service_jitter:.0%}), boot {p.boot_seconds:g} s "
            f"(seed boot {args.seed_boot_seconds:g} s), warm-up {p.warmup_seconds:g} s, metric delay "
            f"{p.metric_delay:g} s, lease {p.visibility_seconds:g} s, group {p.min_size}-{p.max_size}. "
            "Times in minutes.", "", table(rows), "",
            f"## Target sweeps (mean of {len(draws)} arrival draws, lifecycle hook)", ""]
    header = ["| {} | burst p95 min | burst max min | recovery max min | day p95 min | day max min "
              "| day instance-hours | day launches |",
              "|---|---|---|---|---|---|---|---|"]
    for title, sweep, fmt in [
        (f"backlog target, with {args.rate_target:g} uploads/min per worker", backlog_sweep, "{:g}"),
        (f"uploads/min per worker target, with backlog {args.target:g}", rate_sweep, "{}"),
    ]:
        text += [header[0].format(title), header[1]]
        for value, burst, day, recovery in sweep:
            shown = "none (backlog only)" if value is None else fmt.format(value)
            day_cells = ("| - " * 4) if day is None else (
                f"| {day['p95 min']:.1f} | {day['max min']:.1f} | {day['instance-hours']:.1f} | {day['launches']:.1f} ")
            recovery_cell = "-" if recovery is None else f"{recovery['max min']:.1f}"
            text.append(f"| {shown} | {burst['p95 min']:.1f} | {burst['max min']:.1f} | {recovery_cell} {day_cells}|")
        text.append("")
    (args.out / "results.md").write_text("\n".join(text).rstrip() + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
