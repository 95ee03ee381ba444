"""The ``ringkv rollout`` click command: options in, report out."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click

from cli.admin import AdminClient, admin_options
from cli.rollout.plan import Figures, Gates
from cli.rollout.runner import Report, Rollout, run

DEFAULTS = Gates()


def _node_list(ctx: click.Context, param: click.Parameter, value: str | None,
               ) -> list[str] | None:
    if value is None:
        return None
    only = [n.strip() for n in value.split(",") if n.strip()]
    if not only:
        raise click.BadParameter(f"{value!r} names no node (leave --nodes out to roll every "
                                 "node)")
    return only


@click.command()
@click.option("--nodes", "only", callback=_node_list,
              help="Only these nodes (comma-separated ids), in ring order.")
@click.option("--window", "window_s", type=click.FloatRange(min=1), default=10.0,
              show_default=True, help="Seconds of each measurement (baseline and gates).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=180.0,
              show_default=True, help="Longest wait for each step (drain seen, back, ready).")
@click.option("--p99-factor", type=click.FloatRange(min=1), default=DEFAULTS.p99_factor,
              show_default=True, help="Gate: p99 at most this times the baseline's ...")
@click.option("--p99-slack-ms", type=click.FloatRange(min=0), default=DEFAULTS.p99_slack_ms,
              show_default=True, help="... plus this many ms.")
@click.option("--error-rate-slack", type=click.FloatRange(0, 1),
              default=DEFAULTS.error_rate_slack, show_default=True,
              help="Gate: error rate at most the baseline's plus this fraction.")
@click.option("--drain-wait", "drain_wait_s", type=click.FloatRange(min=0), default=1.0,
              show_default=True, help="Seconds between a node's drain (every other node "
              "routes around it) and its restart, for requests already on their way.")
@click.option("--dry-run", is_flag=True, help="Check and print the plan; change nothing.")
@admin_options(with_node=False)
def rollout(target: AdminClient, *, only: list[str] | None, window_s: float, timeout_s: float,
            p99_factor: float, p99_slack_ms: float, error_rate_slack: float,
            drain_wait_s: float, dry_run: bool) -> None:
    """Restart every node, one at a time, into the installed code.

    For each node: drain (peers route around it) -> restart (it stops
    cleanly and executes itself with the same command line) -> ready
    (workers ready, ring seen, peers see it up, hints to it drained) -> gate
    (p99, error rate and quorum failures of every node over --window,
    compared with a baseline window taken before the first node, and no
    under-replicated partition). Stops at the first failed gate. Never takes
    a node down while another node that shares a partition with it is down.
    Clients should use nodes other than the one being restarted (a draining
    node refuses writes): see docs/operations.md, *Rolling upgrade*. One
    rollout at a time: a second one is refused while the first holds the
    rollout lease. Ctrl-C undoes the drain of a node not yet restarted.
    """
    gates = Gates(p99_factor, p99_slack_ms, error_rate_slack)
    started = time.monotonic()

    def say(line: str) -> None:
        click.echo(f"[{time.monotonic() - started:6.1f}s] {line}", err=True)

    worker = Rollout(target.addr, target.secret, gates=gates, window_s=window_s,
                     timeout_s=timeout_s, progress=say, drain_wait_s=drain_wait_s)
    report = asyncio.run(run(worker, only, dry_run))
    code = (0 if report.error is None else 130 if report.interrupted
            else 2 if report.refused else 1)
    if dry_run and report.error is None:
        lines = [f"would restart {', '.join(report.order)} one at a time: drain -> restart "
                 "-> ready -> gate", f"gates over {window_s:g}s windows: {gates.text()}",
                 "safety: no node down now shares a partition with any of them"]
        _finish(target, report, None, 0, lines)
        return
    lines = [f"{n.node}: drained {n.drained_s}s, back {n.restarted_s}s, ready "
             f"{n.ready_s}s; {n.gate.line() if n.gate else '-'}"
             + (f" -- FAILED: {'; '.join(n.failed)}" if n.failed else "")
             for n in report.nodes]
    if report.error is None:
        count = len(report.nodes)
        lines.append(f"rollout done: {count} node{'' if count == 1 else 's'} restarted")
    _finish(target, report, report.error, code, lines)


def _finish(target: AdminClient, report: Report, error: str | None, code: int,
            lines: list[str] | None = None) -> None:
    if target.as_json:
        click.echo(json.dumps(_doc(report, error), indent=2, sort_keys=True))
    else:
        click.echo("\n".join(lines or []))
    if error is not None:
        click.echo(f"error: {error}", err=True)
    if code:
        raise SystemExit(code)


def _figures(f: Figures | None) -> dict[str, Any] | None:
    if f is None:
        return None
    return {"seconds": f.seconds, "commands": f.commands, "errors": f.errors,
            "error_rate": f.error_rate, "quorum_failures": f.quorum_failures,
            "p99_ms": f.p99_ms, "under_replicated": f.under_replicated}


def _doc(report: Report, error: str | None) -> dict[str, Any]:
    """The same keys whether it ran, stopped or was refused."""
    return {"ok": error is None, "error": error, "order": report.order,
            "gates": {"p99_factor": report.gates.p99_factor,
                      "p99_slack_ms": report.gates.p99_slack_ms,
                      "error_rate_slack": report.gates.error_rate_slack},
            "baseline": _figures(report.baseline),
            "nodes": [{"node": n.node, "drained_s": n.drained_s, "restarted_s": n.restarted_s,
                       "ready_s": n.ready_s, "gate": _figures(n.gate), "failed": n.failed}
                      for n in report.nodes]}
