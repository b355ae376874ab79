"""The daemon: wiring and lifecycle.

One loop: take a batch from the source, run the engine, publish the rejected messages to the
dead-letter sink, append decisions and drift signals to the log, and only then commit the batch's
offsets. With checkpoints (``checkpoint.enabled``), offsets are committed only right after a
checkpoint of the engine's state that covers them, at most every ``checkpoint.interval_s``; on start
the state is restored and the partitions resume at the checkpoint's offsets (docs/guarantees.md).
SIGTERM / SIGINT finish the batch in hand, checkpoint, commit, and exit 0. A lost broker never crashes
the daemon: the source reconnects by itself and ``/readyz`` says not-ready meanwhile.

With ``checkpoint.scope: partition`` (several instances in one consumer group), the state is split
into one engine per partition (``watcher.engine.tasks``): each is checkpointed on its own row of a shared
store, handed over when the group rebalances, and restored by the partition's next owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from watcher.backoff import Backoff, Retries
from watcher.config import Settings
from watcher.contract import Action, Decision, Deployment, encode_deployment
from watcher.engine import BatchResult, Engine, Tasks
from watcher.errors import CheckpointError, ConfigError
from watcher.http import Api, FlaggerHooks, Peers, advertising_assignor, auth
from watcher.http import forwarding_middleware as route_to_owner
from watcher.judges import load_policy
from watcher.kafka import (
    DeadLetters,
    KafkaDeadLetters,
    KafkaSource,
    Message,
    MessageBatch,
    Origins,
    Source,
    next_offsets,
)
from watcher.outbox import Outbox
from watcher.service.handover import Handover, HandoverMetrics
from watcher.service.reload import ConfigSource, ReloadMetrics, ReloadResult, fingerprint, plan_reload
from watcher.service.telemetry import StateCollector, WatcherMetrics, setup_tracing
from watcher.sinks import build_sinks
from watcher.state import Change
from watcher.storage import (
    SCOPE_ALL,
    Checkpointer,
    CheckpointMetrics,
    CheckpointStore,
    DecisionLog,
    Offsets,
    SqliteCheckpointStore,
    SqliteDecisionLog,
)

log = logging.getLogger(__name__)


class MarkerPublisher:
    """Writes markers received over HTTP to the deployments topic, so every instance and every
    restart sees them in order with the others (the topic is the durable record; duplicates are
    ignored by event id)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        kafka = self._settings.kafka
        self._producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers,
            client_id=f"{kafka.client_id}-markers",
            acks="all",
            request_timeout_ms=kafka.request_timeout_ms,
            **kafka.client_options(),
        )
        try:
            await self._producer.start()
        except Exception as exc:  # the broker may be down at start-up: retried on first use
            # (the source says once, with a hint, that the broker does not answer)
            log.debug("marker producer not connected yet: %r", exc)

    async def publish(self, marker: Deployment) -> None:
        topics = self._settings.kafka.deployments_topics
        if self._producer is None or not topics:
            return
        await asyncio.wait_for(
            self._producer.send_and_wait(topics[0], encode_deployment(marker), key=marker.agent_id.encode()),
            timeout=10,
        )

    async def stop(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()


class NullMarkerPublisher:
    """For a daemon without Kafka (file sources, tests): markers are applied, not republished."""

    async def start(self) -> None:
        return None

    async def publish(self, marker: Deployment) -> None:
        return None

    async def stop(self) -> None:
        return None


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        source: Source | None = None,
        dead_letters: DeadLetters | None = None,
        decision_log: DecisionLog | None = None,
        engine: Engine | None = None,
        marker_publisher: MarkerPublisher | NullMarkerPublisher | None = None,
        tracer: Any = None,
        outbox: Outbox | None = None,
        checkpoint_store: CheckpointStore | None = None,
        config_source: ConfigSource | None = None,
    ) -> None:
        self.settings = settings
        # where ``settings`` came from, for reload(); None: built in code, nothing to reload from
        self.config_source = config_source
        self._reloading = asyncio.Lock()
        self.registry = registry if registry is not None else CollectorRegistry()
        cp = settings.checkpoint
        # one engine per owned partition (scale-out), or one for the whole instance
        self.tasks: Tasks | None = None
        self.engine: Engine | Tasks
        if cp.enabled and cp.scope == "partition":
            policies = engine.policies if engine is not None else load_policy(settings.judge.policy_file)
            self.tasks = Tasks(self._new_task_engine, policies)
            self.engine = self.tasks
        else:
            self.engine = engine if engine is not None else Engine(settings)
            self.engine.change_listeners.append(self._queue_change)
        topics = [*settings.kafka.telemetry_topics, *settings.kafka.deployments_topics]
        kafka = settings.kafka
        assignment = {}
        self.peers: Peers | None = None
        if self.tasks is not None:
            tasks = self.tasks
            self.peers = Peers(
                partition_count=lambda: tasks.partition_count,
                is_local=lambda p: tasks.get(p) is not None,
                holds_rollout=lambda rid: tasks.registry.get(rid) is not None,
            )
            # partition p of every topic to the same member (the topics are co-partitioned by agent),
            # and every member learns every partition's owner address
            assignor = advertising_assignor(
                lambda: self.peers.address if self.peers else "", self.peers.set_owners
            )
            assignment = {"partition_assignment_strategy": (assignor,)}
        self.source: Source = (
            source
            if source is not None
            else KafkaSource(
                kafka.bootstrap_servers,
                list(dict.fromkeys(topics)),
                kafka.group_id,
                auto_offset_reset=kafka.auto_offset_reset,
                max_records=kafka.max_batch_records,
                poll_timeout_ms=kafka.poll_timeout_ms,
                stale_after=kafka.ready_stale_after_s,
                client_options={
                    "client_id": kafka.client_id,
                    "request_timeout_ms": kafka.request_timeout_ms,
                    "session_timeout_ms": kafka.session_timeout_ms,
                    "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
                    "max_partition_fetch_bytes": kafka.max_partition_fetch_bytes,
                    **assignment,
                    **kafka.client_options(),
                },
            )
        )
        self.dead_letters = dead_letters if dead_letters is not None else KafkaDeadLetters(settings.kafka)
        self.decision_log = (
            decision_log if decision_log is not None else SqliteDecisionLog(settings.judge.decision_log)
        )
        self.markers: MarkerPublisher | NullMarkerPublisher = (
            marker_publisher if marker_publisher is not None else MarkerPublisher(settings)
        )
        self.metrics = WatcherMetrics(self.registry)
        self.reload_metrics = ReloadMetrics(self.registry)
        self.outbox = (
            outbox
            if outbox is not None
            else Outbox(
                settings.outbox.path,
                build_sinks(settings.sinks, kafka=settings.kafka),
                registry=self.registry,
            )
        )
        self.registry.register(StateCollector(self.engine))  # type: ignore[arg-type]
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)
        self.tracer = tracer if tracer is not None else setup_tracing(settings.telemetry)
        self.port: int | None = None
        self.batches_processed = 0
        self.events_consumed = 0
        self._runner: web.AppRunner | None = None
        self.hooks: FlaggerHooks | None = None
        self._http_up = False
        # one batch, checkpoint or API-driven checkpoint at a time: a checkpoint must never see the
        # state of a batch whose offsets are not yet in ``positions``
        self._lock = asyncio.Lock()
        self.checkpointer: Checkpointer | None = None  # the instance's one, or None per partition
        self.handover: Handover | None = None  # per partition, when the state is
        # partitions waiting for an unreachable checkpoint store are read again after 1 s, 2 s... up to 30 s
        self._retry_at, self._store_retries = 0.0, Retries(Backoff(initial_s=1.0, max_s=30.0))
        self.handover_metrics = HandoverMetrics(self.registry)
        if self.tasks is None and hasattr(self.source, "on_assigned"):  # one state: count partitions only
            self.source.on_assigned = self._count_assigned  # type: ignore[attr-defined]
            self.source.on_revoked = self._count_revoked  # type: ignore[attr-defined]
        self.checkpoint_store: CheckpointStore | None = None
        # only a source that can resume at given offsets can pair state and offsets (not a file)
        if cp.enabled and hasattr(self.source, "resume_from") and hasattr(self.source, "commit_offsets"):
            self.checkpoint_store = (
                checkpoint_store if checkpoint_store is not None else _checkpoint_store(settings)
            )
            if self.tasks is None:
                assert isinstance(self.engine, Engine)
                self.checkpointer = Checkpointer(
                    self.checkpoint_store,
                    self.engine,
                    owner=settings.kafka.group_id,
                    interval_s=cp.interval_s,
                    scope=SCOPE_ALL,
                )
                self.source.resume_from = self.checkpointer.resume_offset  # type: ignore[attr-defined]
            self.checkpoint_metrics = CheckpointMetrics(self.registry)
            if self.tasks is not None:
                self.handover = Handover(
                    self.tasks,
                    self.checkpoint_store,
                    owner=settings.kafka.group_id,
                    interval_s=cp.interval_s,
                    metrics=self.checkpoint_metrics,
                    handover_metrics=self.handover_metrics,
                )
                self.source.resume_from = self.handover.resume_offset  # type: ignore[attr-defined]
                self.source.on_assigned = self._assigned  # type: ignore[attr-defined]
                self.source.on_revoked = self._revoked  # type: ignore[attr-defined]
        elif self.tasks is not None:
            raise ConfigError(
                "checkpoint.scope", "'partition' needs a Kafka source (the partitions are the tasks)"
            )

    # -- readiness ------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if not self._http_up:
            return False, "starting"
        if not self.source.ready:
            return False, "not consuming: the broker is unreachable or partitions are not assigned yet"
        return True, "consuming"

    # -- lifecycle ------------------------------------------------------------------------------
    async def start_http(self) -> None:
        api = Api(
            self.engine,
            registry=self.registry,
            decision_log=self.decision_log,
            readiness=self.readiness,
            on_marker=self.markers.publish,
            on_decisions=self._persist_api_decisions,
            deliveries=self.outbox.deliveries,
            max_body_bytes=self.settings.http.max_body_bytes,
            middlewares=[
                auth.middleware(self.settings.http),
                *([route_to_owner(self.peers)] if self.peers else []),
            ],
        )
        self.hooks = FlaggerHooks(
            self.engine,
            self.settings.hooks.flagger,
            on_marker=self.markers.publish,
            readiness=self.readiness,
            decision_log=self.decision_log,
            max_body_bytes=self.settings.http.max_body_bytes,
            peers=self.peers,
        )
        app = api.app()
        app.add_routes(self.hooks.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.http.port
        if self.peers is not None:
            self.peers.address = self.settings.http.advertised_url or _own_url(
                self.settings.http.host, self.port
            )
        self._http_up = True
        log.info("HTTP API on http://%s:%s", self.settings.http.host, self.port)

    def restore(self) -> bool:
        """Restore the engine from the latest checkpoint (before consuming); True if there was one.
        An unreadable checkpoint is logged and left alone: the daemon starts from a fresh state at
        the committed offsets, which is what it did before checkpoints existed."""
        if self.checkpointer is None:
            return False
        try:
            cp = self.checkpointer.restore()
        except CheckpointError as exc:
            log.error("checkpoint not restored (%s): starting from a fresh state", exc)
            return False
        if cp is None:
            return False
        self.checkpoint_metrics.restored(cp)
        log.info(
            "state restored from the checkpoint of %s: %s",
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(cp.written_at)),
            ", ".join(f"{t}/{p}@{o}" for (t, p), o in sorted(cp.offsets.items())) or "no offsets",
        )
        return True

    @property
    def checkpointing(self) -> bool:
        return self.checkpoint_store is not None

    def _checkpointers(self) -> list[Checkpointer]:
        if self.checkpointer is not None:
            return [self.checkpointer]
        return list(self.handover.checkpointers.values()) if self.handover is not None else []

    async def checkpoint(self, *, force: bool = False) -> bool:
        """Checkpoint (when due, or ``force``d and there is something new) and commit its offsets."""
        if not self.checkpointing:
            return False
        async with self._lock:
            return await self._checkpoint(force=force)

    async def _checkpoint(self, *, force: bool = False, only: Sequence[Checkpointer] | None = None) -> bool:
        """Save every checkpoint that is due (or dirty, when ``force``d), then commit exactly the
        offsets the saved ones cover: a checkpoint that failed leaves its partitions uncommitted."""
        saved: Offsets = {}
        for cp in self._checkpointers() if only is None else only:
            if not (cp.due() or (force and cp.dirty)):
                continue
            try:
                saved.update(cp.save())
            except CheckpointError as exc:  # e.g. disk full: nothing is committed, retried next time
                self.checkpoint_metrics.failures.inc()
                log.error("checkpoint %s failed, its offsets are not committed: %s", cp.scope, exc)
                continue
            self.checkpoint_metrics.saved(cp.last.seconds, cp.last.bytes)
        if not saved:
            return False
        await self.source.commit_offsets(saved)  # type: ignore[attr-defined]
        return True

    # -- partition hand-over (checkpoint.scope: partition) ---------------------------------------
    def _new_task_engine(self) -> Engine:
        assert self.tasks is not None
        engine = Engine(self.settings, policies=self.tasks.policies)
        engine.change_listeners.append(self._queue_change)
        return engine

    async def _assigned(self, assigned: set[tuple[str, int]]) -> None:
        """The group gave us these partitions: rebuild each new partition's task from its checkpoint
        (the source then seeks each partition to the offset that checkpoint covers)."""
        assert self.handover is not None
        async with self._lock:
            kafka = self.settings.kafka
            self.handover.set_partition_counts(self._refresh_partition_counts(), kafka.telemetry_topics[0])
            self.handover.take_over(p for _, p in assigned)
            if self.handover.waiting:  # no state to apply their events to yet: not fetched meanwhile
                self.source.pause_partitions(self.handover.waiting)  # type: ignore[attr-defined]
                self._store_retries.reset()
                self._retry_at = time.monotonic() + self._store_retries.next()

    async def _retry_waiting(self) -> None:
        """Partitions whose checkpoint store was unreachable at take-over: read it again (backing off
        up to 30 s); once a partition's state is restored, it is fetched again from its offsets."""
        assert self.handover is not None
        if not self.handover.waiting or time.monotonic() < self._retry_at:
            return
        async with self._lock:
            taken = self.handover.take_over(set(self.handover.waiting))
            if taken:
                self.source.resume_partitions(taken, self.handover.resume_offset)  # type: ignore[attr-defined]
        self._retry_at = time.monotonic() + self._store_retries.next()

    def _refresh_partition_counts(self) -> dict[str, int | None]:
        kafka = self.settings.kafka
        counts = {
            t: self.source.partition_count(t)  # type: ignore[attr-defined]
            for t in (*kafka.telemetry_topics, *kafka.deployments_topics)
        }
        known = [n for n in counts.values() if n]
        if known:  # what the instances of the group hold between them (WatcherPartitionsUnowned)
            self.handover_metrics.partitions.set(max(known))
        return counts

    async def _count_assigned(self, assigned: set[tuple[str, int]]) -> None:
        self._refresh_partition_counts()
        partitions = {p for _, p in assigned}
        self.handover_metrics.handovers.labels("taken_over").inc(len(partitions))
        self.handover_metrics.owned.set(len(partitions))

    async def _count_revoked(self, revoked: set[tuple[str, int]]) -> None:
        self.handover_metrics.handovers.labels("released").inc(len({p for _, p in revoked}))
        self.handover_metrics.owned.set(0)

    async def _revoked(self, revoked: set[tuple[str, int]]) -> None:
        """The group takes these partitions away: checkpoint their tasks and commit the offsets they
        cover while we still own them, then drop them (the next owner restores the checkpoints)."""
        assert self.handover is not None
        partitions = {p for _, p in revoked}
        async with self._lock:
            await self._checkpoint(force=True, only=self.handover.leaving(partitions))
            self.handover.release(partitions)

    async def _checkpoint_ticker(self) -> None:
        """Checkpoints also come when no batch does (an idle topic after a burst, an API override)."""
        period = min(1.0, max(self.settings.checkpoint.interval_s, 0.05))
        while True:
            await asyncio.sleep(period)
            try:
                await self.checkpoint()
                if self.handover is not None:
                    await self._retry_waiting()
            except Exception:  # the ticker must outlive any one failure
                log.exception("periodic checkpoint failed")

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; returns the process exit code."""
        self.restore()
        await self.start_http()
        await self.markers.start()
        await self.source.start()
        outbox_stop = asyncio.Event()
        outbox_task = asyncio.create_task(self.outbox.run(outbox_stop))
        watcher_task = asyncio.create_task(self._watch_config()) if self.settings.config_watch_s > 0 else None
        try:
            await self._consume(stop)
            if self.checkpointing:
                await self.checkpoint(force=True)  # a clean stop leaves nothing to re-read
        finally:
            if watcher_task is not None:
                watcher_task.cancel()
            outbox_stop.set()
            with contextlib.suppress(Exception):
                await outbox_task
            self.outbox.close()
            self._http_up = False
            await self.source.stop()
            if self.hooks is not None:
                await self.hooks.close()
            if self.peers is not None:
                await self.peers.close()
            await self.markers.stop()
            with contextlib.suppress(Exception):
                await self.dead_letters.stop()  # type: ignore[attr-defined]
            if self._runner is not None:
                await self._runner.cleanup()
            self.decision_log.close()
            if self.checkpoint_store is not None:
                self.checkpoint_store.close()
        return 0

    # -- configuration reload (SIGHUP) -----------------------------------------------------------
    async def reload(self) -> ReloadResult:
        """Read the configuration and the policy file again and apply the policy and the sinks
        without a restart, keeping every judge's statistics and every pending delivery
        (``watcher.service.reload``; docs/configuration.md#reloading). Applied between two batches, under the
        batch lock, so no batch, checkpoint or API override sees half of it. An invalid configuration
        is rejected whole: logged naming the field, counted, and the configuration in force stays."""
        async with self._reloading:  # SIGHUPs in quick succession apply one after the other
            source = self.config_source
            if source is None:
                return self._reload_rejected(
                    "reload",
                    "this daemon's settings were not loaded from a "
                    "configuration (built in code): nothing to reload from",
                )
            try:
                plan = plan_reload(
                    self.settings,
                    source.path,
                    source.environ,
                    overrides=source.overrides,
                    current_policies=self.engine.policies,
                )
                running = {s.name: s for s in self.outbox.sinks}
                fresh = [
                    s
                    for s in plan.settings.sinks
                    if plan.sinks_differ
                    and (s.name in plan.sinks_added + plan.sinks_changed or s.name not in running)
                ]
                built = {s.name: s for s in build_sinks(fresh, kafka=self.settings.kafka)}
            except ConfigError as exc:
                return self._reload_rejected(exc.field, str(exc))
            sinks = [built.get(s.name) or running[s.name] for s in plan.settings.sinks]
            async with self._lock:
                try:
                    kept = self.engine.replace_policies(plan.policies) if plan.policy_changed else {}
                except Exception as exc:  # a judge that cannot be rebuilt: nothing was replaced
                    log.exception("configuration reload: the policy could not be applied")
                    return self._reload_rejected(
                        "judge.policy_file", f"the policy could not be applied: {exc}"
                    )
                swap = await self.outbox.replace_sinks(sinks) if plan.sinks_differ else None
                self.settings = plan.settings
                if plan.policy_changed:
                    for cp in self._checkpointers():
                        cp.mark_dirty()  # the judges' policies are part of the checkpoint
            self.reload_metrics.applied()
            log.info("configuration reloaded: %s", plan.summary())
            for rid, why in kept.items():
                log.warning("rollout %s keeps the policy it started with until it ends: %s", rid, why)
            if plan.restart_needed:
                log.warning(
                    "configuration reload: %s changed but take effect only after a restart",
                    ", ".join(plan.restart_needed),
                )
            return ReloadResult(True, plan=plan, policies_kept=kept, sinks=swap)

    async def _watch_config(self) -> None:
        """``config_watch_s``: reload when the configuration or the policy file changed (once per
        change: a rejected file is not retried until it changes again)."""
        source = self.config_source
        if source is None or source.path is None:
            log.warning(
                "config_watch_s is set but the settings were not loaded from a file: nothing to watch"
            )
            return

        def files() -> str:
            return fingerprint(source.path, self.settings.judge.policy_file)

        seen = files()
        while True:
            await asyncio.sleep(self.settings.config_watch_s)
            try:
                now = files()
                if now != seen:
                    seen = now
                    log.info("configuration files changed: reloading")
                    await self.reload()
                    seen = files()  # the policy file may be another one now
            except Exception:  # the watcher must outlive any one failure
                log.exception("watching the configuration files failed")

    def _reload_rejected(self, field: str, message: str) -> ReloadResult:
        self.reload_metrics.rejected()
        log.error("configuration reload rejected, the configuration in force stays: %s", message)
        return ReloadResult(False, error=message, field=field)

    async def _health_ticker(self) -> None:
        """Lag moves while no batch arrives too (an idle or unreachable broker)."""
        while True:
            for (topic, partition), lag in self.source.lag().items():
                self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)
            await asyncio.sleep(1.0)

    async def _consume(self, stop: asyncio.Event) -> None:
        batches = self.source.batches().__aiter__()
        stopper = asyncio.ensure_future(stop.wait())
        ticker = asyncio.ensure_future(self._health_ticker())
        checkpoints = asyncio.ensure_future(self._checkpoint_ticker()) if self.checkpointing else None
        try:
            while not stop.is_set():
                fetch = asyncio.ensure_future(batches.__anext__())
                done, _ = await asyncio.wait({fetch, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if fetch not in done:
                    fetch.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await fetch
                    break
                try:
                    batch = fetch.result()
                except StopAsyncIteration:
                    break
                # the batch in hand is finished and committed even when a stop arrives meanwhile
                await self.handle(batch)
        finally:
            stopper.cancel()
            ticker.cancel()
            if checkpoints is not None:
                checkpoints.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checkpoints

    async def handle(self, batch: Sequence[Message]) -> BatchResult:
        async with self._lock:
            return await self._handle(batch)

    async def _handle(self, batch: Sequence[Message]) -> BatchResult:
        started = time.perf_counter()
        with self.tracer.start_as_current_span("watcher.batch") as span:
            if self.tasks is None:
                assert isinstance(self.engine, Engine)
                values = batch.values if isinstance(batch, MessageBatch) else [m.value for m in batch]
                result = self.engine.process(values, origins=Origins(batch))
                covered: dict[int, Offsets] = {}
            else:
                assert self.handover is not None
                result, covered = self.handover.process(batch)
            if result.rejected:
                await self.dead_letters.publish(result.rejected)
                self.metrics.dead_letters.inc(len(result.rejected))
            await self._persist_decisions(result.decisions)
            if result.drift_signals:
                self.outbox.enqueue_drift(result.drift_signals)
                for signal in result.drift_signals:
                    self.decision_log.append_drift(signal)
                    self.metrics.drift_signals.labels(
                        signal.agent_id, signal.environment, signal.version, signal.metric
                    ).inc()
            if not self.checkpointing:
                await self.source.commit(batch)
            elif self.checkpointer is not None:
                # the state now covers the batch; its offsets are committed with the next checkpoint
                self.checkpointer.advance(next_offsets(batch))
                await self._checkpoint()
            elif self.handover is not None:
                self.handover.advance(covered)
                await self._checkpoint()
            span.set_attribute("watcher.events", len(batch))
            span.set_attribute("watcher.turns", result.turns)
            span.set_attribute("watcher.rejected", len(result.rejected))
            span.set_attribute("watcher.decisions", len(result.decisions))
        self._observe(batch, result, time.perf_counter() - started)
        return result

    async def _persist_decisions(self, decisions: list[Decision]) -> None:
        if not decisions:
            return
        self.decision_log.append_many(decisions)  # the audit trail first, then the signals
        self.outbox.enqueue_decisions(decisions)
        for d in decisions:
            self.metrics.decisions.labels(d.rollout.agent_id, d.rollout.environment, d.action.value).inc()
            log.warning("decision %s %s: %s", d.action.value, d.rollout.rollout_id, d.reason)

    async def _persist_api_decisions(self, decisions: list[Decision]) -> None:
        """An override or acknowledgement changed the policy state outside any batch: checkpoint it
        soon (the ticker picks it up within a second) rather than at the next interval."""
        await self._persist_decisions(decisions)
        if self.checkpointer is not None and decisions:
            self.checkpointer.mark_dirty()
        elif self.handover is not None:
            self.handover.mark_dirty(d.rollout.rollout_id for d in decisions)

    def _queue_change(self, change: Change) -> None:
        """Rollout starts, updates and ends go to the sinks (markers, Grafana regions, PagerDuty)."""
        if change.superseded is not None:
            ended = change.superseded
            self.outbox.enqueue_rollout_change(
                "ended", ended.to_dict(), ended.ended_ts or ended.started_ts, None
            )
        rollout = change.rollout
        if rollout is None or change.kind == "orphan":
            return
        last = rollout.markers[-1] if rollout.markers else None
        marker = last if last is not None and last.get("event_id") else None
        if change.kind in ("started", "rebased"):
            ts = rollout.started_ts
        elif change.kind == "ended":
            ts = rollout.ended_ts or rollout.started_ts
        else:
            ts = float(last["ts"]) if last is not None else rollout.started_ts
        kind = "updated" if change.kind == "rebased" else change.kind  # sinks see the marker as an update
        self.outbox.enqueue_rollout_change(kind, rollout.to_dict(), ts, marker)

    def _observe(self, batch: Sequence[Message], result: BatchResult, seconds: float) -> None:
        m = self.metrics
        for change in result.changes:
            if change.kind == "started" and change.rollout is not None:
                # series exist at 0 from the rollout's start, so increase() sees the first decision
                for action in (Action.PAUSE, Action.ROLLBACK, Action.PROMOTE, Action.RESUME):
                    m.decisions.labels(change.rollout.agent_id, change.rollout.environment, action.value)
        if isinstance(batch, MessageBatch):
            by_topic = batch.counts_by_topic()
        else:
            by_topic = {}
            for msg in batch:
                by_topic[msg.topic] = by_topic.get(msg.topic, 0) + 1
        for topic, n in by_topic.items():
            m.events_consumed.labels(topic).inc(n)
        for r in result.rejected:
            m.events_rejected.labels(r.reason.value).inc()
        if result.duplicates:
            m.events_duplicate.inc(result.duplicates)
        m.batch_duration.observe(seconds)
        m.batch_events.observe(len(batch))
        m.last_batch.set(time.time())
        for (topic, partition), lag in self.source.lag().items():
            m.consumer_lag.labels(topic, str(partition)).set(lag)
        self.batches_processed += 1
        self.events_consumed += len(batch)


def _own_url(host: str, port: int) -> str:
    """How other instances reach this one when ``http.advertised_url`` does not say."""
    if host in ("", "0.0.0.0", "::"):
        import socket

        host = socket.getfqdn()
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def _checkpoint_store(settings: Settings) -> CheckpointStore:
    cp = settings.checkpoint
    if cp.store == "kafka":
        from watcher.storage import KafkaCheckpointStore

        return KafkaCheckpointStore(
            settings.kafka.bootstrap_servers, cp.topic, client_options=settings.kafka.client_options()
        )
    return SqliteCheckpointStore(cp.path)
