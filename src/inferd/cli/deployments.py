"""`inferd deploy`, `inferd deployments` (list, show, test, delete), `inferd traffic` (set,
show), `inferd routing` (set, show), `inferd rollout` (blue-green, canary, status, promote,
rollback), `inferd abtest` (report) and `inferd predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from inferd.cli.common import (
    CliError,
    Command,
    Group,
    client_for,
    json_arg,
    json_option,
    print_details,
    print_json,
    print_table,
    server_option,
    v2_body,
)
from inferd.cli.jobs import wait_for_job
from inferd.client import Client


def _deploy_config(
    existing: dict[str, Any] | None, options: dict[str, Any], batching: dict[str, Any]
) -> dict[str, Any] | None:
    """The config to send: the options given, over the current config when redeploying (the
    server replaces a config whole, so unchanged fields must be sent again)."""
    if not options and not batching:
        return None
    base = dict(existing["config"]) if existing else {}
    cfg = {**base, **options}
    if batching:
        cfg["batching"] = {**base.get("batching", {}), **batching}
    return cfg


def _deployed(dep: dict[str, Any], url: str, as_json: bool) -> None:
    if as_json:
        print_json(dep)
    elif dep["status"] == "ready":
        click.echo(f"{dep['model']} version {dep['version']} is ready (deployment {dep['id']}); "
                   f"POST {url}{dep['endpoint']}")  # fmt: skip
    elif dep["status"] != "failed":
        click.echo(f"deployment {dep['id']}: {dep['status']} "
                   f"(follow it with `inferd deployments show {dep['id']}`)")  # fmt: skip
    if dep["status"] == "failed":
        raise CliError(f"deployment {dep['id']} failed: {dep.get('reason') or 'no reason given'}")


@click.command(cls=Command)
@click.argument("name")
@click.option("--version", type=click.IntRange(min=1), help="Default: the newest ready one.")
@click.option("--min-replicas", type=click.IntRange(0, 64))
@click.option("--max-replicas", type=click.IntRange(1, 64))
@click.option("--instance-kind", type=click.Choice(["process", "thread"]))
@click.option("--max-batch-size", type=click.IntRange(min=0))
@click.option("--max-queue-delay-ms", type=click.FloatRange(min=0))
@click.option("--runtime")
@click.option("--canary", type=click.IntRange(1, 99), metavar="PERCENT",
              help="Give the version this share beside the served one, as an analysed canary "
                   "(rolled back if worse) until `inferd rollout promote`.")  # fmt: skip
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for ready.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait.")
@server_option
@json_option
def deploy(
    name: str, version: int | None, min_replicas: int | None, max_replicas: int | None,
    instance_kind: str | None, max_batch_size: int | None, max_queue_delay_ms: float | None,
    runtime: str | None, canary: int | None, no_wait: bool, timeout: float, server: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Deploy a model version (or redeploy: a model has one deployment, updated in place)."""
    if canary is not None:
        _deploy_canary(name, version, canary, server, as_json)
        return
    given = {"min_replicas": min_replicas, "max_replicas": max_replicas,
             "instance_kind": instance_kind, "runtime": runtime}  # fmt: skip
    options = {k: v for k, v in given.items() if v is not None}
    pairs = (("max_batch_size", max_batch_size), ("max_queue_delay_ms", max_queue_delay_ms))
    batching = {k: v for k, v in pairs if v is not None}
    with client_for(server) as c:
        existing = next((d for d in c.deployments() if d["model"] == name), None)
        config = _deploy_config(existing, options, batching)
        if existing is None:
            dep = c.deploy(name, version, config, wait=False)
        else:
            if version is None:  # "deploy NAME" means its newest ready version
                version = _newest_ready(c, name)
            dep = c.update_deployment(existing["id"], version, config, wait=False)
        if not no_wait:
            with Console(stderr=True).status(f"deploying {name} version {dep['version']}"):
                dep = c.wait_deployment(dep["id"], timeout)
    _deployed(dep, c.base_url, as_json)


def _newest_ready(c: Client, name: str) -> int | None:
    return max((v["version"] for v in c.versions(name) if v["status"] == "ready"), default=None)


def _deploy_canary(
    name: str, version: int | None, share: int, server: str | None, as_json: bool
) -> None:
    with client_for(server) as c:
        if version is None:
            version = _newest_ready(c, name)
            if version is None:
                raise CliError(f"model '{name}' has no ready version")
        dep = c.canary(name, version, [share], dwell_s=0, auto_promote=False)
    _show_rollout(dep, as_json)


@click.group(cls=Group)
def deployments() -> None:
    """Deployments: list, show, test, delete."""


DEPLOYMENT_COLUMNS = ("id", "model", "version", "status", "reason", "generation",
                      "observed_generation", "updated_at")  # fmt: skip


@deployments.command("list")
@server_option
@json_option
def deployments_list(server: str | None, as_json: bool) -> None:
    """Deployments you may see."""
    with client_for(server) as c:
        rows = c.deployments()
    if as_json:
        print_json(rows)
    else:
        print_table(rows, DEPLOYMENT_COLUMNS)


@deployments.command("show")
@click.argument("deployment_id")
@server_option
@json_option
def deployments_show(deployment_id: str, server: str | None, as_json: bool) -> None:
    """One deployment with its config."""
    with client_for(server) as c:
        dep = c.deployment(deployment_id)
    if as_json:
        print_json(dep)
    else:
        print_details(dep, (*DEPLOYMENT_COLUMNS, "endpoint", "config", "created_by"),
                      dep["model"])  # fmt: skip


@deployments.command("delete")
@click.argument("deployment_id")
@server_option
def deployments_delete(deployment_id: str, server: str | None) -> None:
    """Stop serving: the model is unloaded (its versions stay)."""
    with client_for(server) as c:
        c.delete_deployment(deployment_id)
    click.echo(f"deleted deployment {deployment_id}")


@deployments.command("test")
@click.argument("deployment_id")
@server_option
@json_option
def deployments_test(deployment_id: str, server: str | None, as_json: bool) -> None:
    """Run the version's sample input and compare with its sample output (exit 1 if not)."""
    with client_for(server) as c:
        result = c.test_deployment(deployment_id)
    if as_json:
        print_json(result)
    elif result["passed"]:
        checked = "matches the expected output" if result.get("expected") else "ran"
        click.echo(f"passed: the sample input {checked}")
    if not result["passed"]:
        raise CliError("test failed: " + "; ".join(result.get("problems") or ["no reason given"]))


# ---- inference -------------------------------------------------------------------------------


@click.command(cls=Command)
@click.argument("name")
@click.option("--input", "input_", required=True, metavar="FILE_OR_JSON",
              help='A V2 body {"inputs": [...]}, or {"INPUT": [[...]]} (floats FP32, ints INT64); '
                   "inline, a file, or - for stdin.")  # fmt: skip
@click.option("--version", help="A model version (default: the deployed one).")
@click.option(
    "--async",
    "async_",
    is_flag=True,
    help="Queue it as an async prediction and print the job (see `inferd jobs`).",
)
@click.option("--wait", is_flag=True, help="With --async: wait for the job and print it.")
@click.option("--idempotency-key", default=None, help="With --async: the same key, the same job.")
@server_option
def predict(name: str, input_: str, version: str | None, async_: bool, wait: bool,
            idempotency_key: str | None, server: str | None) -> None:  # fmt: skip
    """Run a model once (V2 inference) and print the response JSON; with --async, queue it
    and print the job."""
    body = v2_body(json_arg(input_, "--input"), "--input")
    with client_for(server) as c:
        if not async_:
            print_json(c.predict_raw(name, body, version))
            return
        job = c.submit_prediction(name, body, version, idempotency_key=idempotency_key)
        if wait:
            job = wait_for_job(c, job["id"])
    print_json(job)


@click.group(cls=Group)
def traffic() -> None:
    """Traffic splits among a deployment's revisions: set, show."""


def _weights(pairs: tuple[str, ...]) -> dict[int, int]:
    """`1=90 2=10` (or `v1=90`) as {version: weight}."""
    out: dict[int, int] = {}
    for pair in pairs:
        version, sep, weight = pair.partition("=")
        version = version.removeprefix("v")
        if not sep or not version.isdigit() or not weight.isdigit():
            raise click.BadParameter(
                f"'{pair}': write VERSION=WEIGHT, e.g. 1=90", param_hint="SPLIT"
            )
        out[int(version)] = int(weight)
    return out


def _show_traffic(dep: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(dep)
        return
    rows = [{"version": r["version"], "weight": f"{r['weight']}%",
             "primary": "yes" if r["version"] == dep["version"] else ""}
            for r in dep["traffic"]]  # fmt: skip
    print_table(rows, ("version", "weight", "primary"))


@traffic.command("set")
@click.argument("name")
@click.argument("split", nargs=-1, required=True)
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for ready.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait.")
@server_option
@json_option
def traffic_set(
    name: str, split: tuple[str, ...], no_wait: bool, timeout: float, server: str | None,
    as_json: bool,
) -> None:  # fmt: skip
    """Split NAME's traffic: `inferd traffic set fraud 1=90 2=10` (whole percentages, sum 100).
    Revisions already served keep their replicas; a weight change reloads nothing."""
    weights = _weights(split)
    with client_for(server) as c:
        dep = c.set_traffic(name, weights, wait=not no_wait, timeout=timeout)
    if dep["status"] == "failed":
        raise CliError(f"deployment {dep['id']} failed: {dep.get('reason') or 'no reason given'}")
    _show_traffic(dep, as_json)


@traffic.command("show")
@click.argument("name")
@server_option
@json_option
def traffic_show(name: str, server: str | None, as_json: bool) -> None:
    """Show NAME's revisions and their weights."""
    with client_for(server) as c:
        dep = next((d for d in c.deployments() if d["model"] == name), None)
    if dep is None:
        raise CliError(f"model '{name}' has no deployment")
    _show_traffic(dep, as_json)


@click.group(cls=Group)
def routing() -> None:
    """A deployment's routing policy (header rules, fallbacks, circuit breaker): set, show."""


@routing.command("set")
@click.argument("name")
@click.argument("policy")
@server_option
@json_option
def routing_set(name: str, policy: str, server: str | None, as_json: bool) -> None:
    """Set NAME's routing policy from POLICY: a JSON object, `@FILE` to read one, or `{}` to
    remove it, e.g. `inferd routing set fraud '{"fallbacks": [{"model": "fraud-small"}]}'`."""
    text = Path(policy[1:]).read_text() if policy.startswith("@") else policy
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="POLICY") from None
    if not isinstance(doc, dict):
        raise click.BadParameter("must be a JSON object", param_hint="POLICY")
    with client_for(server) as c:
        dep = c.set_routing(name, doc)
    print_json(dep if as_json else dep["routing"])


@routing.command("show")
@click.argument("name")
@server_option
def routing_show(name: str, server: str | None) -> None:
    """Show NAME's routing policy (`{}`: none)."""
    with client_for(server) as c:
        dep = next((d for d in c.deployments() if d["model"] == name), None)
    if dep is None:
        raise CliError(f"model '{name}' has no deployment")
    print_json(dep["routing"])


@click.group(cls=Group)
def rollout() -> None:
    """Roll a deployment out to another version: blue-green, canary, status, promote,
    rollback."""


def _show_rollout(dep: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(dep)
        return
    ro = dep.get("rollout")
    if ro is None:
        raise CliError(f"{dep['model']}: no rollout seen by this server")
    share = f" at {ro['weight']}%" if ro["strategy"] == "canary" else ""
    print(f"{dep['model']}: {ro['strategy']} {ro['from']} → {ro['to']}{share}: {ro['phase']}")
    rows = [{"at": e["at"], "event": e["event"], "detail": _detail(e)} for e in ro["events"]]
    print_table(rows, ("at", "event", "detail"))


def _detail(event: dict[str, Any]) -> str:
    """An event's figures in one line: the share, the canary's error rate and p99 against the
    stable version's, the reasons."""
    parts = []
    if "weight" in event:
        parts.append(f"{event['weight']}%")
    for who in ("canary", "stable"):
        f = event.get(who)
        if f:
            p99 = (f.get("latency_ms") or {}).get("p99")
            p99_text = f", p99 {p99:.3g} ms" if p99 is not None else ""
            parts.append(f"{who}: {f['requests']} req, {f['error_rate']:.2%} errors{p99_text}")
    parts += event.get("reasons") or []
    if event.get("reason"):
        parts.append(str(event["reason"]))
    return "; ".join(parts)


@rollout.command("blue-green")
@click.argument("name")
@click.argument("version", type=int)
@click.option("--test", is_flag=True, help="The version's sample test must pass first.")
@click.option("--keep-previous", type=float, default=300, show_default=True,
              help="Seconds the previous version stays warm (for a rollback).")  # fmt: skip
@server_option
@json_option
def rollout_blue_green(
    name: str, version: int, test: bool, keep_previous: float, server: str | None, as_json: bool
) -> None:
    """Bring VERSION up beside NAME's served version, then switch all traffic to it at once."""
    with client_for(server) as c:
        dep = c.rollout(name, version, test=test, keep_previous_s=keep_previous)
    _show_rollout(dep, as_json)


@rollout.command("canary")
@click.argument("name")
@click.argument("version", type=int)
@click.option(
    "--steps",
    default="5,25,50,100",
    show_default=True,
    help="The canary's shares, in %, comma-separated.",
)
@click.option(
    "--dwell", type=float, default=60, show_default=True, help="Seconds each step lasts at least."
)
@click.option(
    "--interval", type=float, default=5, show_default=True, help="Seconds between checks."
)
@click.option("--min-requests", type=int, help="Canary answers needed before a verdict.")
@click.option("--max-error-rate", type=float, help="Highest error rate the canary may have.")
@click.option(
    "--max-error-rate-increase",
    type=float,
    help="Most the canary's error rate may exceed the stable version's.",
)
@click.option(
    "--max-latency-ratio",
    multiple=True,
    metavar="P=RATIO",
    help="p50/p95/p99 ratio to the stable version's, e.g. p99=2 (repeatable).",
)
@click.option("--window", type=float, help="Seconds of outcomes each check looks at.")
@click.option(
    "--manual-promote", is_flag=True, help="Stay at the last step until `inferd rollout promote`."
)
@server_option
@json_option
def rollout_canary(
    name: str, version: int, steps: str, dwell: float, interval: float,
    min_requests: int | None, max_error_rate: float | None,
    max_error_rate_increase: float | None, max_latency_ratio: tuple[str, ...],
    window: float | None, manual_promote: bool, server: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Give VERSION of NAME growing shares of the traffic, compared with the served version at
    every check: rolled back by itself when worse, promoted after the last step."""
    try:
        shares = [int(x) for x in steps.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("write whole percentages, e.g. 5,25,50,100",
                                 param_hint="--steps") from None  # fmt: skip
    given = {"min_requests": min_requests, "max_error_rate": max_error_rate,
             "max_error_rate_increase": max_error_rate_increase, "window_s": window}  # fmt: skip
    analysis: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if max_latency_ratio:
        analysis["max_latency_ratio"] = _ratios(max_latency_ratio)
    with client_for(server) as c:
        dep = c.canary(name, version, shares, dwell, interval, analysis,
                       auto_promote=not manual_promote)  # fmt: skip
    _show_rollout(dep, as_json)


def _ratios(pairs: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        p, sep, ratio = pair.partition("=")
        try:
            out[p.strip()] = float(ratio)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"'{pair}': write P=RATIO, e.g. p99=2",
                                     param_hint="--max-latency-ratio")  # fmt: skip
    return out


@rollout.command("status")
@click.argument("name")
@server_option
@json_option
def rollout_status(name: str, server: str | None, as_json: bool) -> None:
    """Show NAME's latest rollout: its phase, the canary's share and every decision."""
    with client_for(server) as c:
        dep = c.rollout_status(name)
    _show_rollout(dep, as_json)


@rollout.command("promote")
@click.argument("name")
@server_option
@json_option
def rollout_promote(name: str, server: str | None, as_json: bool) -> None:
    """End NAME's canary now: the canary version serves all traffic."""
    with client_for(server) as c:
        dep = c.promote(name)
    _show_rollout(dep, as_json)


@rollout.command("rollback")
@click.argument("name")
@server_option
@json_option
def rollout_rollback(name: str, server: str | None, as_json: bool) -> None:
    """Move NAME's traffic back to the version served before its last rollout (while warm)."""
    with client_for(server) as c:
        dep = c.rollback(name)
    _show_rollout(dep, as_json)


@click.group(cls=Group)
def abtest() -> None:
    """A deployment's A/B test (its revisions are the arms): report."""


@abtest.command("report")
@click.argument("name")
@server_option
@json_option
def abtest_report(name: str, server: str | None, as_json: bool) -> None:
    """Each arm's requests and feedback, and each arm against the control arm."""
    with client_for(server) as c:
        rep = c.abtest_report(name)
    if as_json:
        print_json(rep)
        return
    rows = [{"arm": a["version"], "weight": f"{a['weight']:g}%", "served": a["served"],
             "feedback": a["feedback"], "mean": _num(a["mean"]), "rate": _num(a["rate"])}
            for a in rep["arms"]]  # fmt: skip
    print_table(rows, ("arm", "weight", "served", "feedback", "mean", "rate"))
    for c in rep["comparisons"]:
        ci = c["ci"] and f"[{c['ci'][0]:.4g}, {c['ci'][1]:.4g}]"
        print(f"{c['treatment']} vs {c['control']}: {c['test'] or 'not enough feedback'}, "
              f"difference {_num(c['difference'])}, p = {_num(c['p_value'])}, "
              f"95% CI {ci or '-'}")  # fmt: skip


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"
