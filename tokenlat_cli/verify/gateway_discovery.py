"""Gateway discovery for the agents' load_balancing exporter, as the scale-out run emulates it on 127.0.0.1.

The agents route to the gateways with the load_balancing exporter's ``static`` resolver: a fixed list, which the
exporter never changes by itself (its README: "there's a risk of data loss if one of the defined endpoint targets
becomes unavailable"). In Kubernetes the ``k8s`` resolver (EndpointSlices) or the ``dns`` resolver over a headless
service drops a dead pod from the ring. Neither can run on a loopback-only test machine, so this watcher stands in
for them, doing what they do, from outside:

- it probes each gateway's health_check extension every :data:`PROBE_INTERVAL` seconds and drops a gateway after
  :data:`FAILURES_TO_DROP` failed probes in a row (a gateway that answers again is taken back after one success);
- when the set of live gateways changes, it renders each agent's config again with the live gateways
  (``tiers.gateways``), writes it in place atomically and sends the agent SIGHUP, on which the Collector reloads
  its config (go.opentelemetry.io/collector/otelcol, Collector.Run: SIGHUP -> reloadConfiguration, a full restart
  of the pipelines in the same process); the reload is done when the agent logs "Everything is ready" again.

Detection takes at most ``FAILURES_TO_DROP x PROBE_INTERVAL`` plus one probe's timeout (a killed process refuses
the connection at once, so in practice about ``FAILURES_TO_DROP x PROBE_INTERVAL``); the run measures it, and the
reload, each time (:class:`Reroute`). The ``k8s`` resolver learns of a deleted pod from its EndpointSlice watch
within about a second, of a hung one after its readiness probe fails (periodSeconds x failureThreshold); the ``dns``
resolver re-resolves every ``interval`` (5 s by default) plus the record's TTL.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tokenlat_cli.files import write_atomically
from tokenlat_cli.verify.processes import ManagedProcess

PROBE_INTERVAL = 0.25
FAILURES_TO_DROP = 2
PROBE_TIMEOUT = 0.5
#: How long an agent may take to come back after SIGHUP before the reroute is reported as failed.
RELOAD_TIMEOUT = 30.0
#: What the Collector logs when its pipelines are up: at start, and after each reload (service.Start).
READY_LINE = "Everything is ready"


def detection_bound(interval: float = PROBE_INTERVAL, failures: int = FAILURES_TO_DROP) -> float:
    """The longest a dead gateway stays in the ring before the watcher notices: ``failures`` probes, the first up to
    one interval after the death, each up to its timeout."""
    return failures * interval + PROBE_TIMEOUT


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the health check at ``url`` answers 200 within ``timeout``."""
    with requests.Session() as session:
        session.trust_env = False
        try:
            return session.get(url, timeout=timeout).status_code == 200
        except requests.RequestException:
            return False


@dataclass
class Agent:
    """An agent whose gateways the watcher keeps: its process, where its config is and how to render it."""

    name: str
    process: ManagedProcess
    config_path: Path
    #: The agent's config for a list of gateways (render_collector_config with tiers.gateways set).
    render: Callable[[list[str]], str]

    def ready_lines(self) -> int:
        try:
            return self.process.log_path.read_text(encoding="utf-8", errors="replace").count(READY_LINE)
        except FileNotFoundError:
            return 0


@dataclass
class Reroute:
    """One change of the live set, and how the agents took it (wall-clock times, time.time())."""

    removed: list[str]
    added: list[str]
    live: list[str]
    #: The last probe of each removed gateway that succeeded.
    last_healthy: float
    detected: float
    signalled: float = 0.0
    #: Agent name -> when it was ready again with the new config.
    reloaded: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def detection_seconds(self) -> float:
        return self.detected - self.last_healthy

    @property
    def reload_seconds(self) -> float:
        """From the first SIGHUP to the last agent ready again (NaN when one never was)."""
        if not self.reloaded or self.errors:
            return float("nan")
        return max(self.reloaded.values()) - self.signalled

    @property
    def done(self) -> float:
        return max(self.reloaded.values(), default=float("nan"))


class GatewayWatcher:
    """The health-checking loop and the agents' reloads, in a thread of its own (see the module docstring).

    ``gateways`` maps each gateway's OTLP address (as the agents route to it) to its health-check URL, in the order
    the agents list them. Use as a context manager: the thread runs inside the block.
    """

    def __init__(
        self,
        gateways: Mapping[str, str],
        agents: Sequence[Agent],
        interval: float = PROBE_INTERVAL,
        failures: int = FAILURES_TO_DROP,
    ) -> None:
        self.gateways = dict(gateways)
        self.agents = {agent.name: agent for agent in agents}
        self.interval = interval
        self.failures = failures
        #: Held while the agents are being rewritten and reloaded: an agent is replaced (restarted) only outside.
        self.lock = threading.Lock()
        self.reroutes: list[Reroute] = []
        self._live = list(self.gateways)
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokenlat-gateway-watcher", daemon=True)

    def __enter__(self) -> GatewayWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=RELOAD_TIMEOUT + 5)

    @property
    def live(self) -> list[str]:
        with self._changed:
            return list(self._live)

    def render(self, agent: Agent) -> str:
        """The agent's config for the gateways live now (for an agent started again)."""
        return agent.render(self.live)

    @contextlib.contextmanager
    def replacing(self, name: str) -> Iterator[Agent]:
        """Hold off reroutes while the caller stops agent ``name`` and starts it again; it sets the new process and
        config path on the Agent it is given."""
        with self.lock:
            yield self.agents[name]

    def wait_for_reroute(self, count: int, timeout: float) -> Reroute:
        """The ``count``-th reroute (1-based) once every agent has reloaded; TimeoutError naming what is missing."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if len(self.reroutes) >= count:
                    reroute = self.reroutes[count - 1]
                    if reroute.errors or len(reroute.reloaded) == len(self.agents):
                        return reroute
                left = deadline - time.monotonic()
                if left <= 0:
                    have = self.reroutes[count - 1] if len(self.reroutes) >= count else None
                    raise TimeoutError(
                        f"gateway watcher: reroute {count} not done within {timeout:g}s "
                        f"({'no change of the live gateways seen' if have is None else have})"
                    )
                self._changed.wait(min(left, 0.1))

    # -- the thread

    def _run(self) -> None:
        failed = dict.fromkeys(self.gateways, 0)
        last_ok = dict.fromkeys(self.gateways, time.time())
        while not self._stop.wait(self.interval):
            for address, url in self.gateways.items():
                if probe(url):
                    failed[address] = 0
                    last_ok[address] = time.time()
                else:
                    failed[address] += 1
            live = [address for address in self.gateways if failed[address] < self.failures]
            current = self.live
            if live == current:
                continue
            if not live:
                continue  # no gateway answers: keep the last ring rather than render an agent that routes nowhere
            removed = [a for a in current if a not in live]
            reroute = Reroute(
                removed=removed,
                added=[a for a in live if a not in current],
                live=live,
                last_healthy=min((last_ok[a] for a in removed), default=time.time()),
                detected=time.time(),
            )
            with self._changed:
                self._live = live
                self.reroutes.append(reroute)
            self._reload_agents(reroute)

    def _reload_agents(self, reroute: Reroute) -> None:
        with self.lock:
            before: dict[str, int] = {}
            for agent in self.agents.values():
                write_atomically(agent.config_path, agent.render(reroute.live))
                before[agent.name] = agent.ready_lines()
            reroute.signalled = time.time()
            for agent in self.agents.values():
                agent.process.signal_group(signal.SIGHUP)
            deadline = time.monotonic() + RELOAD_TIMEOUT
            waiting = dict(self.agents)
            while waiting and not self._stop.is_set():
                for name, agent in list(waiting.items()):
                    if agent.ready_lines() > before[name]:
                        reroute.reloaded[name] = time.time()
                        del waiting[name]
                    elif agent.process.popen.poll() is not None:
                        reroute.errors.append(f"agent {name} exited on reload; see {agent.process.log_path}")
                        del waiting[name]
                if time.monotonic() > deadline:
                    reroute.errors.extend(f"agent {name} not reloaded within {RELOAD_TIMEOUT:g}s" for name in waiting)
                    break
                time.sleep(0.02)
        with self._changed:
            self._changed.notify_all()
