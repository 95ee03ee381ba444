"""The shipped alert rules and Grafana dashboard against a real Prometheus
(Debian's ``prometheus``) scraping a running 3-node cluster, and the status
page in headless Chromium (issue 16, points 2 and 3).

One cluster serves the module; with one node killed (as both tests need)
Prometheus must: accept every rule (``promtool check rules``), evaluate
every alert expression and every dashboard query with data behind it, and
show the under-replication alert pending. The test's Prometheus scrapes and
evaluates every second; the shipped rules are loaded unchanged (their
``for:`` only delays firing: an alert is pending from its first true
evaluation)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.cluster import ROOT, Cluster, free_ports, wait_for

pytestmark = pytest.mark.integration

RULES = ROOT / "deploy" / "prometheus" / "ringkv-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ringkv-dashboard.json"
DOWN = 2  # the node the tests kill


class Load:
    """A trickle of SETs and GETs through the nodes that stay up, so that
    rates and latency quantiles have data; stops with the fixture."""

    def __init__(self, c: Cluster) -> None:
        self.stop = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._run, args=(c,), daemon=True)
        self._thread.start()

    def _run(self, c: Cluster) -> None:
        clients = [c.client(i, socket_timeout=5) for i in (0, 1)]
        i = 0
        while not self.stop.wait(0.02):
            r = clients[i % 2]
            try:
                r.set(f"load:{i % 500}", b"v" * 100)
                r.get(f"load:{(i * 7) % 500}")
            except redis.RedisError:
                self.errors += 1
            i += 1

    def close(self) -> None:
        self.stop.set()
        self._thread.join(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("oncall")), nodes=3, n=3, workers=2)
    load = None
    try:
        c.start()
        load = Load(c)
        yield c
    finally:
        if load is not None:
            load.close()
        c.close()


def one_node_down(c: Cluster) -> None:
    """Node ``DOWN`` killed and seen down by the others (once per module)."""
    if c.members[DOWN].running:
        c.kill(DOWN)
    c.wait_seen(DOWN, "down", timeout=60)


# -- Prometheus -------------------------------------------------------------------


def test_promtool_accepts_every_rule() -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian's prometheus package; scripts/test.sh)")
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], check=False,
                         capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 10 rules found" in out.stdout


class Prometheus:
    def __init__(self, root: Path, c: Cluster) -> None:
        self.port = free_ports(1)[0]
        targets = [f"127.0.0.1:{m.metrics_port}" for m in c.members]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "ringkv", "static_configs": [{"targets": targets}]}],
        }
        (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = root / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["prometheus", f"--config.file={root / 'prometheus.yml'}",
                 f"--storage.tsdb.path={root / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)

    def query(self, expr: str) -> list[Any]:
        reply = self.get("/api/v1/query", query=expr)
        assert reply["status"] == "success", (expr, reply)
        return list(reply["data"]["result"])

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def prometheus(cluster: Cluster, tmp_path: Path) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (Debian's prometheus package; scripts/test.sh)")
    p = Prometheus(tmp_path, cluster)
    try:
        wait_for("prometheus ready", p.ready, 60, interval=0.25)
        yield p
    finally:
        p.close()


def panel_queries() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in doc["panels"]
            for target in panel.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ringkv|process)_[a-z0-9_]+)", expr))


def test_alerts_and_dashboard_queries_have_data_and_under_replication_goes_pending(
    cluster: Cluster, prometheus: Prometheus
) -> None:
    wait_for("prometheus scrapes all three nodes", lambda: len(
        prometheus.query('up{job="ringkv"} == 1')) == 3, 30, interval=0.5)
    one_node_down(cluster)

    def pending() -> bool:
        alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
        return any(a["labels"]["alertname"] == "RingkvUnderReplicatedPartitions"
                   and a["state"] in ("pending", "firing") for a in alerts)

    wait_for("RingkvUnderReplicatedPartitions pending", pending, 60, interval=0.5)
    # Writes to the down node's partitions leave hints: the backlog panels have data.
    wait_for("hint backlog scraped", lambda: prometheus.query(
        "sum(ringkv_hint_backlog_writes) > 0"), 60, interval=0.5)

    # Every rule as Prometheus loaded it from the shipped file: its
    # expression evaluates, and every metric it reads has series.
    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert len(rules) == 10
    assert rules["RingkvUnderReplicatedPartitions"]["labels"]["severity"] == "page"
    for name, rule in rules.items():
        prometheus.query(rule["query"])
        for metric in metric_names(rule["query"]):
            assert prometheus.query(f"count({metric})"), (name, metric)
    queries = panel_queries()
    assert len(queries) >= 25
    for title, expr in queries:
        wait_for(f"data for panel {title!r}", lambda e=expr: prometheus.query(e), 30,
                 interval=0.5)
    print("alerts:", sorted((a["labels"]["alertname"], a["state"]) for a in
                            prometheus.get("/api/v1/alerts")["data"]["alerts"]))


# -- the status page ----------------------------------------------------------------


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--virtual-time-budget=2000", *args],
        check=False, capture_output=True, text=True, timeout=120)


def test_status_page_in_headless_chromium_shows_the_node_down(
    cluster: Cluster, tmp_path: Path
) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed (Debian's chromium package; scripts/test.sh)")
    one_node_down(cluster)
    m = cluster.members[0]
    # A hot key through node 0, with bytes the page must escape.
    hot = b"hot<b>&'key"
    with cluster.client(0, socket_timeout=10) as r:
        for i in range(300):
            assert r.set(hot, i) if i % 3 == 0 else r.get(hot) is not None
    url = f"http://{m.host}:{m.metrics_port}/"
    with urllib.request.urlopen(url, timeout=10) as resp:
        page = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/html")
    # No external assets (works offline) and no scripts.
    for fetch in ("src=", "href=", "url(", "@import", "<script", "http://", "https://"):
        assert fetch not in page, fetch
    with urllib.request.urlopen(url + "metrics", timeout=10) as resp:
        assert b"ringkv_partitions_under_replicated" in resp.read()

    shot = tmp_path / "status.png"
    out = chromium(f"--screenshot={shot}", "--window-size=1280,1600", url)
    assert shot.exists() and shot.stat().st_size > 10_000, out.stderr[-2000:]
    out = chromium("--dump-dom", url)
    dom = out.stdout
    down = cluster.members[DOWN].name
    assert f"data-node=\"{down}\" data-state=\"down\"" in dom, dom[:3000]
    for i in (0, 1):
        name = cluster.members[i].name
        assert f"data-node=\"{name}\" data-state=\"up\"" in dom
    assert "<svg" in dom and "data-partition=" in dom  # the ring
    assert 'data-hot-key="hot&lt;b&gt;&amp;\'key"' in dom, dom[:3000]  # escaped, ranked
    assert "<b>&" not in page
    under = re.search(r'data-figure="under-replicated">(\d+)<', dom)
    assert under is not None and int(under.group(1)) > 0
    print(f"screenshot {shot} ({shot.stat().st_size} bytes)")
