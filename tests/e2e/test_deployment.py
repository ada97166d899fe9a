"""The installed package runs the services the way the image and docker-compose.yml do.

The wheel is installed non-editable in a fresh virtualenv outside the
repository. Each service of the compose file that runs the project's image is
started from that virtualenv with the compose file's own command, environment
and replica count, the Dockerfile's ``ENV`` and ``WORKDIR``, and its volumes
as folders, in a working directory laid out as in the image. Only the broker,
Redis and SMTP addresses differ: they point at the embedded stack (and the
embedded broker needs ``recovery_consistency_check`` off). Health checks run as
the compose file writes them, ports mapped to free ones.
"""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from stream.contract import format_timestamp
from stream.embedded import EmbeddedStack, free_port
from stream.settings import load_settings
from stream.topics import read_topic
from stream.triggers.holdout import Holdouts
from stream.triggers.playbook import rule_holdouts
from tests.compose import (
    ComposeFile,
    MissingVariable,
    Service,
    image_environment,
    image_workdir,
    map_paths,
    map_ports,
)
from tests.helpers import REPO, wait_for
from tests.installed import InstalledPackage
from tests.procs import http_get

pytestmark = pytest.mark.slow

#: What an operator puts in the compose project's .env: the secrets compose requires.
OPERATOR_ENV: dict[str, str] = {
    "REDIS_PASSWORD": secrets.token_urlsafe(16),
    "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(16),
    "JOURNEY_DISPATCH_TRACKING_SECRET": secrets.token_urlsafe(32),
    "JOURNEY_COLLECTOR_WRITE_KEYS": f"{secrets.token_urlsafe(12)}=web",
    "JOURNEY_WORKER_API_TOKENS": f"{secrets.token_urlsafe(24)}=admin",
}


@dataclass
class Container:
    """One replica of a compose service, run as a process of the installed package."""

    service: Service
    index: int
    root: Path
    package: InstalledPackage
    overrides: dict[str, str]
    mounts: dict[str, Path] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        name = f"{self.service.name}-{self.index}"
        base = self.root / name
        self.mounts[image_workdir()] = base / "app"
        for host, container in self.service.volumes:
            if host is not None and host.startswith("."):
                # A bind mount of the compose project's folder (./pos-inbox): shared.
                self.mounts[container] = self.root / host.lstrip("./")
            else:
                self.mounts[container] = base / "volumes" / container.strip("/").replace("/", "_")
        for folder in self.mounts.values():
            folder.mkdir(parents=True, exist_ok=True)
        self.ports = {port: free_port() for port in sorted(self.service.container_ports())}
        self.log = base / "log.txt"

    def map(self, value: str) -> str:
        return map_ports(map_paths(value, self.mounts), self.ports)

    @property
    def environment(self) -> dict[str, str]:
        env = {**image_environment(), **self.service.environment}
        env = {k: self.map(v) for k, v in env.items()}
        return {**env, **self.overrides}

    @property
    def argv(self) -> list[str]:
        return [self.package.journey, *(self.map(a) for a in self.service.command)]

    def start(self) -> Container:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.mounts[image_workdir()],
                env=self.package.environ(self.environment),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def healthy(self) -> bool:
        """The compose health check, as written, with its ports mapped."""
        check = self.service.healthcheck
        assert check, f"{self.service.name} has no health check"
        argv = [self.package.python if a == "python" else self.map(a) for a in check]
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.service.name} exited:\n{self.log_tail()}")
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0

    def wait_healthy(self, timeout: float = 120) -> None:
        try:
            wait_for(self.healthy, bool, timeout_s=timeout, every_s=0.5)
        except AssertionError as exc:
            log = f"--- {self.service.name} log ---\n{self.log_tail()}"
            raise AssertionError(f"{exc}\n{log}") from None

    def host_port(self, container_port: int) -> int:
        return self.ports[container_port]

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (what ``docker compose down`` sends), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def scrape_as_prometheus_would(containers: list[Container]) -> dict[str, int]:
    """Scrape every target of config/prometheus/prometheus.yml; replicas answering, per job.

    Targets name compose services and their container ports, mapped here to the
    replicas' host ports, so the scrape config and the compose file cannot drift.
    """
    config = yaml.safe_load((REPO / "config" / "prometheus" / "prometheus.yml").read_text())
    answered: dict[str, int] = {}
    for job in config["scrape_configs"]:
        targets = [(d["names"][0], int(d["port"])) for d in job.get("dns_sd_configs", [])]
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.partition(":")
                targets.append((host, int(port)))
        for service, port in targets:
            for c in containers:
                if c.service.name != service:
                    continue
                assert port in c.ports, f"{service} does not listen on {port}: {c.ports}"
                status, body = http_get(f"http://127.0.0.1:{c.ports[port]}/metrics")
                assert status == 200 and "# TYPE" in str(body), (service, status)
                answered[service] = answered.get(service, 0) + 1
    return answered


def treated(customer: str, rule: str) -> bool:
    """Whether the shipped config sends ``customer`` the follow-ups of ``rule``."""
    s = load_settings(environ={})
    fractions = rule_holdouts(s.journey.abandonment, s.journey.followups)
    return not Holdouts(fractions, s.dispatch.holdout_salt).held_out(rule, customer)


def local_noon_zone(now: datetime) -> str:
    """An IANA zone where it is about noon now, so quiet hours never hold the email."""
    offset = 12 - now.hour
    offset = offset - 24 if offset > 14 else offset
    # Etc/GMT zones carry the inverted sign: Etc/GMT-2 is UTC+2.
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def pos_export(rows: list[dict[str, Any]]) -> bytes:
    fields = ["store_id", "register", "receipt_id", "timestamp", "customer_id", "loyalty_id"]
    fields += ["email", "items", "total", "currency", "kind"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_installed_package_runs_the_compose_services(
    installed: InstalledPackage, tmp_path: Path
) -> None:
    compose = ComposeFile.load(environ=OPERATOR_ENV)
    redis_password = OPERATOR_ENV["REDIS_PASSWORD"]
    with EmbeddedStack(tmp_path / "stack", redis_password=redis_password) as stack:
        assert stack.redis is not None and stack.smtp is not None
        overrides = {
            "JOURNEY_BROKER_URL": stack.broker.url,
            "JOURNEY_REDIS_URL": stack.redis.url,
            "JOURNEY_SMTP_HOST": stack.smtp.host,
            "JOURNEY_SMTP_PORT": str(stack.smtp.port),
            # The embedded broker under-reports end offsets (see WorkerSettings).
            "JOURNEY_WORKER_RECOVERY_CONSISTENCY_CHECK": "false",
        }
        containers: list[Container] = []

        def run(name: str) -> list[Container]:
            service = compose[name]
            started = [
                Container(service, i, tmp_path, installed, overrides).start()
                for i in range(service.replicas)
            ]
            containers.extend(started)
            return started

        try:
            # `topics` runs to completion before everything that depends on it.
            (topics,) = run("topics")
            assert topics.proc is not None
            assert topics.proc.wait(120) == 0, topics.log_tail()
            for name, service in compose.services.items():
                if "build" in service.spec and name != "topics":
                    assert service.depends_on.get("topics") == "service_completed_successfully"
            workers = run("worker")
            assert len(workers) == 2, "compose runs two workers"
            (collector,) = run("collector")
            (dispatcher,) = run("dispatcher")
            (pos,) = run("pos")
            for c in (collector, *workers, dispatcher, pos):
                c.wait_healthy()
            scraped = scrape_as_prometheus_would(containers)
            assert scraped == {"worker": 2, "collector": 1, "dispatcher": 1, "pos": 1}, scraped
            shop(compose, collector, workers, pos, stack, tmp_path)
            # State went to the volumes: each worker's RocksDB in its own /data, the POS
            # producer's checkpoint in its named volume.
            for w in workers:
                assert any(w.mounts["/data"].rglob("*.sst")) or any(
                    w.mounts["/data"].rglob("CURRENT")
                ), w.mounts["/data"]
            checkpoint = map_paths(pos.environment["JOURNEY_POS_CHECKPOINT"], {})
            assert Path(checkpoint).is_file(), checkpoint
            assert Path(checkpoint).is_relative_to(pos.mounts["/data"])
        finally:
            codes = {f"{c.service.name}-{c.index}": c.stop() for c in reversed(containers)}
        # Every service stops cleanly on SIGTERM; the one-shot topics job exited 0.
        assert set(codes.values()) == {0}, codes


def shop(
    compose: ComposeFile,
    collector: Container,
    workers: list[Container],
    pos: Container,
    stack: EmbeddedStack,
    tmp_path: Path,
) -> None:
    """Two shoppers through the real Segment client and a POS export; check their emails."""
    from segment.analytics import Client

    assert stack.smtp is not None
    # Ada is in the treated group of the cart rule (the shipped config holds out a tenth).
    run_id = next(r for r in iter(lambda: uuid.uuid4().hex[:8], "") if treated(f"ada-{r}", "cart"))
    now = datetime.now(UTC)
    zone = local_noon_zone(now)
    t0 = now - timedelta(minutes=50)
    keys = compose["collector"].environment["JOURNEY_COLLECTOR_WRITE_KEYS"]
    write_key = keys.split(",")[0].split("=")[0]
    (port,) = compose["collector"].container_ports()
    client = Client(write_key, host=f"http://127.0.0.1:{collector.host_port(port)}", sync_mode=True)
    context = {"timezone": zone}
    ada, bob = f"ada-{run_id}", f"bob-{run_id}"
    ada_mail, bob_mail = f"ada-{run_id}@example.com", f"bob-{run_id}@example.com"
    loyalty = f"LC-{run_id}"
    # Bob buys in the store with his loyalty card. The export reaches Kafka before his
    # web session does: by then the watermark is long past his cart's deadline, so only
    # a purchase already in the stream can cancel it (event time, not arrival order).
    export = pos_export(
        [
            {
                "store_id": "berlin-01",
                "register": "1",
                "receipt_id": f"R-{run_id}",
                "timestamp": format_timestamp(int((t0 + timedelta(minutes=5)).timestamp() * 1000)),
                "customer_id": "",
                "loyalty_id": loyalty,
                "email": "",
                "items": "SKU-B:1:20.00:Trail shoe",
                "total": "20.00",
                "currency": "EUR",
                "kind": "sale",
            }
        ]
    )
    inbox = pos.mounts["/inbox"]
    staged = inbox / f".sales-{run_id}.tmp"
    staged.write_bytes(export)
    os.replace(staged, inbox / f"sales-{run_id}.csv")
    wait_for(
        lambda: [
            r
            for r in read_topic(stack.broker.bootstrap, "touchpoints")
            if r.value and loyalty.encode() in r.value
        ],
        bool,
        60,
    )
    # Ada adds to her cart and leaves: the cart email is due 30 minutes later.
    client.identify(ada, {"email": ada_mail, "first_name": "Ada"}, context, t0)
    client.track(ada, "Product Added", cart_item("SKU-A"), context, t0 + timedelta(minutes=1))
    # Bob logs in (linking his loyalty card) and adds to his cart before that sale.
    traits = {"email": bob_mail, "first_name": "Bob", "loyalty_id": loyalty}
    client.identify(bob, traits, context, t0)
    client.track(bob, "Product Added", cart_item("SKU-B"), context, t0 + timedelta(minutes=1))
    client.flush()

    def mail_for(address: str) -> list[str]:
        return [
            str(m.message["Subject"])
            for m in stack.smtp.received()  # type: ignore[union-attr]
            if address in m.rcpt_tos
        ]

    # Ada's cart email arrives; Bob's in-store purchase (linked through his card)
    # cancelled his, and brought him the welcome email instead.
    wait_for(lambda: (mail_for(ada_mail), mail_for(bob_mail)), lambda r: r[0] and r[1], 120)
    (port_w,) = compose["worker"].container_ports()
    (token,) = [t.split("=")[0] for t in OPERATOR_ENV["JOURNEY_WORKER_API_TOKENS"].split(",")]
    url = f"http://127.0.0.1:{workers[0].host_port(port_w)}/customers/{bob}/journey"
    assert http_get(url)[0] == 401, "the worker's API needs a token"
    status, journey = http_get(url, token=token)
    assert status == 200, journey
    assert journey["stage"] == "purchase", journey
    deadline = int((t0 + timedelta(minutes=31)).timestamp() * 1000)
    assert journey["settled_until"] >= deadline, journey
    triggers = [
        orjson.loads(record.value)
        for record in read_topic(stack.broker.bootstrap, "journey.triggers")
        if record.value
    ]
    rules = sorted(
        (t["journey_key"], t["rule"]) for t in triggers if t["journey_key"] in (ada, bob)
    )
    assert rules == sorted([(ada, "cart"), (bob, "welcome")]), rules
    assert len(mail_for(ada_mail)) == 1 and len(mail_for(bob_mail)) == 1
    # Links signed by the dispatcher verify at the collector: both got the same key.
    (email,) = [m.message for m in stack.smtp.received() if ada_mail in m.rcpt_tos]
    body = email.get_body(preferencelist=("html",))
    assert body is not None
    base = compose["dispatcher"].environment["JOURNEY_DISPATCH_TRACKING_BASE_URL"]
    pixel = re.search(re.escape(base) + r"/e/open/[^\"'<>\s]+\.gif", body.get_content())
    assert pixel is not None, body.get_content()[:2000]
    status, _ = http_get(collector.map(pixel.group(0)).replace("localhost", "127.0.0.1"))
    assert status == 200
    tampered = pixel.group(0).replace("/e/open/", "/e/open/x")
    assert http_get(collector.map(tampered).replace("localhost", "127.0.0.1"))[0] == 400
    assert "cart" in mail_for(ada_mail)[0].lower() or "Ada" in mail_for(ada_mail)[0]


def cart_item(sku: str) -> dict[str, Any]:
    return {"sku": sku, "name": "Trail shoe", "price": 20.0, "quantity": 1, "currency": "EUR"}


def test_installed_package_replays_and_reports_its_files_from_any_folder(
    installed: InstalledPackage, tmp_path: Path
) -> None:
    log = tmp_path / "events.jsonl"
    installed.run("simulate", "--customers", "40", "--seed", "7", "--out", str(log), cwd=tmp_path)
    replayed = installed.run("replay", str(log), "--until", "end", cwd=tmp_path)
    lines = [orjson.loads(line) for line in replayed.splitlines() if line.startswith("{")]
    assert {line["kind"] for line in lines} >= {"transition", "trigger", "state"}
    # The same log through this checkout's code: the installed package runs the same rules.
    here = subprocess.run(
        [sys.executable, "-m", "stream.cli", "replay", str(log), "--until", "end"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert replayed == here.stdout
    shown = orjson.loads(installed.run("config", cwd=tmp_path))
    assert {f["origin"] for f in shown["files"]} == {"packaged"}
    assert {f["kind"] for f in shown["files"]} == {"settings", "stage_model", "template"}


def test_compose_stops_at_once_naming_a_missing_secret() -> None:
    env = {k: v for k, v in OPERATOR_ENV.items() if k != "JOURNEY_DISPATCH_TRACKING_SECRET"}
    with pytest.raises(MissingVariable, match="JOURNEY_DISPATCH_TRACKING_SECRET"):
        ComposeFile.load(environ=env)
    # docker-compose itself refuses too (Debian's, installed by scripts/install-system-deps).
    proc = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "JOURNEY_DISPATCH_TRACKING_SECRET" in proc.stderr


@pytest.mark.parametrize(
    ("service", "placeholder", "named"),
    [
        ("dispatcher", {"JOURNEY_DISPATCH_TRACKING_SECRET": "change-me"}, "TRACKING_SECRET"),
        ("dispatcher", {"REDIS_PASSWORD": "change-me"}, "JOURNEY_REDIS_URL"),
        ("collector", {"JOURNEY_COLLECTOR_WRITE_KEYS": "demo-write-key=web"}, "WRITE_KEYS"),
        ("collector", {"JOURNEY_DISPATCH_TRACKING_SECRET": "change-me"}, "TRACKING_SECRET"),
        ("worker", {"JOURNEY_WORKER_API_TOKENS": "change-me=admin"}, "API_TOKENS"),
    ],
)
def test_services_refuse_placeholder_secrets_naming_the_variable(
    installed: InstalledPackage,
    tmp_path: Path,
    service: str,
    placeholder: dict[str, str],
    named: str,
) -> None:
    compose = ComposeFile.load(environ={**OPERATOR_ENV, **placeholder})
    spec = compose[service]
    proc = subprocess.run(
        [installed.journey, *spec.command],
        cwd=tmp_path,
        env=installed.environ({**image_environment(), **spec.environment}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert named in proc.stderr and "refuses to start with default secrets" in proc.stderr
