"""The daemon: the loop and its lifecycle (its parts are built by ``watcher.service.compose``).

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
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from watcher.config import Settings
from watcher.contract import Action, Decision, OtlpCounts, OtlpDecoder, Rejected
from watcher.engine import BatchResult, Engine, Tasks
from watcher.http import (
    Api,
    ConnectionGuard,
    FlaggerHooks,
    Listening,
    OtlpReceiver,
    Peers,
    auth_middleware,
    guard_middleware,
    own_url,
)
from watcher.http import forwarding_middleware as route_to_owner
from watcher.judges import preload
from watcher.kafka import (
    DeadLetters,
    Message,
    MessageBatch,
    OffsetSource,
    Origins,
    PartitionListener,
    Source,
    TurnWriter,
    next_offsets,
)
from watcher.outbox import Outbox
from watcher.service.exposition import Exposition
from watcher.service.grace import Grace
from watcher.service.looplag import LoopLag
from watcher.service.markers import Markers
from watcher.service.partitions import Checkpoints, TaskPartitions
from watcher.service.reload import ConfigSource, Reloader, ReloadMetrics, ReloadResult
from watcher.service.slices import Slices
from watcher.service.telemetry import WatcherMetrics
from watcher.storage import DecisionLog, Offsets, SqliteSpool

__all__ = ["Daemon", "Parts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parts:
    """What a daemon runs, built from the settings by ``watcher.service.compose.build_daemon``."""

    engine: Engine | Tasks  # the one engine, or the partition tasks' read view
    tasks: Tasks | None  # checkpoint.scope: partition
    source: Source
    partitions: PartitionListener  # told of rebalances by the source
    checkpoints: Checkpoints | None  # None: offsets are committed after every batch
    dead_letters: DeadLetters
    spool: SqliteSpool  # records Kafka would not take yet (dead letters, markers), closed at the end
    decision_log: DecisionLog
    markers: Markers
    turns: TurnWriter  # POST /v1/traces: what it reads goes to the telemetry topic first
    outbox: Outbox
    peers: Peers | None  # checkpoint.scope: partition: requests about another instance's agents
    tracer: Any
    registry: CollectorRegistry
    exposition: Exposition  # GET /metrics: the registry's text, built without holding the loop
    metrics: WatcherMetrics
    reload_metrics: ReloadMetrics
    lock: asyncio.Lock  # one batch, checkpoint, rebalance or reload at a time


class Daemon:
    def __init__(
        self, settings: Settings, parts: Parts, *, config_source: ConfigSource | None = None
    ) -> None:
        self.settings = settings
        # where ``settings`` came from, for reload(); None: built in code, nothing to reload from
        self.config_source = config_source
        self.engine = parts.engine
        self.tasks = parts.tasks
        self.source = parts.source
        self.partitions = parts.partitions
        self.checkpoints = parts.checkpoints
        self.dead_letters = parts.dead_letters
        self.spool = parts.spool
        self.decision_log = parts.decision_log
        self.markers = parts.markers
        self.turns = parts.turns
        self.outbox = parts.outbox
        self.peers = parts.peers
        self.tracer = parts.tracer
        self.registry = parts.registry
        self.exposition = parts.exposition
        self.slices = Slices()
        self.metrics = parts.metrics
        self.reload_metrics = parts.reload_metrics
        # a checkpoint must never see the state of a batch whose offsets are not yet in ``positions``
        self._lock = parts.lock
        self.reloader = Reloader(self, parts.reload_metrics)
        self.metrics.ready.set_function(lambda: 1.0 if self.readiness()[0] else 0.0)
        self.port: int | None = None
        self.batches_processed = 0
        self.events_consumed = 0
        self._listening: Listening | None = None
        self.hooks: FlaggerHooks | None = None
        self._http_up = False
        self._torn = False  # a batch was abandoned part-way at shutdown: no checkpoint after it

    # -- readiness ------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if not self._http_up:
            return False, "starting"
        if not self.source.ready:
            return False, "not consuming: the broker is unreachable or partitions are not assigned yet"
        checkpoints = self.checkpoints.health() if self.checkpoints is not None else None
        for why in (self.dead_letters.health(), self.markers.health(), checkpoints):
            if why:
                return False, why
        return True, "consuming"

    # -- lifecycle ------------------------------------------------------------------------------
    async def start_http(self) -> None:
        http = self.settings.http
        guard = ConnectionGuard(http.max_connections_per_client, http.client_timeout_s)
        api = Api(
            self.engine,
            registry=self.registry,
            metrics_body=self.exposition.render,
            decision_log=self.decision_log,
            readiness=self.readiness,
            on_marker=self.markers.publish,
            on_decisions=self._persist_api_decisions,
            deliveries=self.outbox,
            max_body_bytes=self.settings.http.max_body_bytes,
            middlewares=[
                guard_middleware(http, guard),  # before authentication: refused without reading a token
                auth_middleware(http),
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
            wait_s=self.settings.hooks.wait_s,
        )
        app = api.app()
        app.add_routes(self.hooks.routes())
        if self.settings.otlp.enabled:
            otlp = self.settings.otlp
            decoder = OtlpDecoder(otlp.mapping, max_message_bytes=otlp.max_message_bytes)
            app.add_routes(OtlpReceiver(decoder, self.turns, self._received_spans).routes())
        self._listening = await Listening.start(app, http, guard)
        self.port = self._listening.port  # port 0 is chosen here
        if self.peers is not None:
            self.peers.address = self.settings.http.advertised_url or own_url(
                self.settings.http.host, self.port
            )
        self._http_up = True
        log.info("HTTP API on http://%s:%s", self.settings.http.host, self.port)

    async def _received_spans(self, counts: OtlpCounts, rejected: list[Rejected]) -> None:
        """A request to POST /v1/traces: its spans counted, its rejected spans and turns dead-lettered."""
        self.metrics.count_spans(counts)
        if rejected:
            await self.dead_letters.publish(rejected)
            self.metrics.dead_letters.inc(len(rejected))
            for r in rejected:
                self.metrics.events_rejected.labels(r.reason.value).inc()

    def restore(self) -> bool:
        """Restore the engine from the latest checkpoint (before consuming); True if there was one
        (``Checkpoints.restore``: an unreadable checkpoint means a fresh state)."""
        return self.checkpoints.restore() if self.checkpoints is not None else False

    @property
    def checkpointing(self) -> bool:
        return self.checkpoints is not None

    async def checkpoint(self, *, force: bool = False) -> bool:
        """Checkpoint (when due, or ``force``d and there is something new) and commit its offsets."""
        if self.checkpoints is None:
            return False
        async with self._lock:
            return await self._checkpoint(force=force)

    async def _checkpoint(self, *, force: bool = False) -> bool:
        """Save every checkpoint that is due, then commit exactly the offsets the saved ones cover
        (the caller holds the batch lock)."""
        assert self.checkpoints is not None
        saved = await self.checkpoints.save(force=force)
        if not saved:
            return False
        assert isinstance(self.source, OffsetSource)  # checkpoints are kept only with one (compose)
        await self.source.commit_offsets(saved)
        return True

    async def _checkpoint_ticker(self) -> None:
        """Checkpoints also come when no batch does (an idle topic after a burst, an API override)."""
        period = min(1.0, max(self.settings.checkpoint.interval_s, 0.05))
        while True:
            await asyncio.sleep(period)
            try:
                await self.checkpoint()
                await self._resume_restored()
            except Exception:  # the ticker must outlive any one failure
                log.exception("periodic checkpoint failed")

    async def _resume_restored(self) -> None:
        """Held partitions (their checkpoint store was unreachable at take-over) whose state could
        be restored now are fetched again, from their checkpoint's offsets."""
        partitions = self.partitions
        if not isinstance(partitions, TaskPartitions) or not partitions.retry_due:
            return
        async with self._lock:
            taken = partitions.retry_waiting()
            if taken:
                assert isinstance(self.source, OffsetSource)  # partition tasks need one (compose)
                self.source.resume_partitions(taken, partitions.resume_offset)

    async def run(self, stop: asyncio.Event, *, freeze_heap: bool = False) -> int:
        """Run until ``stop`` is set; returns the process exit code.

        ``freeze_heap`` (``watcher run``; the whole process is the daemon's): once started, what
        start-up made (the libraries' modules, the restored state) leaves the cyclic garbage
        collector's reach (``gc.freeze``). A full collection walked it all: ~110,000 objects,
        hundreds of milliseconds of held event loop on a busy machine, every time one ran.

        After ``stop`` everything happens within ``shutdown_grace_s``: the batch in hand is finished
        (or, if it cannot be within the grace, abandoned uncommitted: it is read again at the next
        start), a last checkpoint is written and committed, then each part is closed, each step
        bounded by what is left of the grace."""
        self.restore()
        await self.start_http()
        # the judges' heavy libraries, in a worker thread before the first batch would import them on
        # the event loop (seconds on a busy machine, /healthz unanswered meanwhile)
        await asyncio.to_thread(preload)
        if freeze_heap:
            gc.collect()  # the garbage of start-up first: frozen, it would never be collected
            gc.freeze()
        await self.markers.start()
        await self.dead_letters.start()
        await self.source.start(self.partitions)
        outbox_stop = asyncio.Event()
        outbox_task = asyncio.create_task(self.outbox.run(outbox_stop))
        lag_task = asyncio.create_task(LoopLag(self.metrics.loop_lag).run())
        watcher_task = (
            asyncio.create_task(self.reloader.watch()) if self.settings.config_watch_s > 0 else None
        )
        grace = Grace(self.settings.shutdown_grace_s)
        try:
            await self._consume(stop, grace)
            if self.checkpointing and not self._torn:
                # a clean stop leaves nothing to re-read
                await grace.bounded("the last checkpoint", self.checkpoint(force=True), share=0.5)
        finally:
            grace.start()  # an error, not a stop: the same bounded clean-up
            lag_task.cancel()
            if watcher_task is not None:
                watcher_task.cancel()
            outbox_stop.set()
            await grace.bounded("the outbox", outbox_task)
            self.outbox.close()
            self._http_up = False
            await grace.bounded("leaving the consumer group", self.source.stop())
            if self.hooks is not None:
                await grace.bounded("the Flagger hooks", self.hooks.close())
            if self.peers is not None:
                await grace.bounded("the peers", self.peers.close())
            await grace.bounded("the marker publisher", self.markers.stop())
            await grace.bounded("the OTLP/HTTP turn writer", self.turns.stop())
            await grace.bounded("the dead-letter publisher", self.dead_letters.stop())
            if self._listening is not None:
                await grace.bounded("the HTTP server", self._listening.close())
            self.decision_log.close()
            self.spool.close()
            if self.checkpoints is not None:
                self.checkpoints.close()
        return 0

    # -- configuration reload (SIGHUP, config_watch_s: watcher.service.reload) --------------------
    async def reload(self) -> ReloadResult:
        """Read the configuration and the policy file again and apply them (``Reloader.reload``)."""
        return await self.reloader.reload()

    @property
    def batch_lock(self) -> asyncio.Lock:
        """Held by every batch, checkpoint, rebalance and reload: one at a time."""
        return self._lock

    async def _health_ticker(self) -> None:
        """Lag moves while no batch arrives too (an idle or unreachable broker)."""
        while True:
            for (topic, partition), lag in self.source.lag().items():
                self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)
            await asyncio.sleep(1.0)

    async def _consume(self, stop: asyncio.Event, grace: Grace | None = None) -> None:
        grace = grace or Grace(self.settings.shutdown_grace_s)
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
                # the batch in hand is finished and committed even when a stop arrives meanwhile,
                # unless it cannot be within the grace (an output that does not answer)
                handling = asyncio.ensure_future(self.handle(batch))
                done, _ = await asyncio.wait({handling, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if handling not in done:
                    grace.start()
                    if not await grace.bounded("the batch in hand", handling, share=0.5):
                        self._abandoned(len(batch))
                        break
                handling.result()
        finally:
            stopper.cancel()
            ticker.cancel()
            if checkpoints is not None:
                checkpoints.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checkpoints

    def _abandoned(self, events: int) -> None:
        """The batch in hand was cancelled part-way: the engine may hold it without its offsets, so no
        checkpoint may be written from now on (it would count the batch twice after the restart)."""
        self._torn = True
        if self.checkpoints is not None:
            self.checkpoints.freeze("a batch was abandoned at shutdown")
        log.error(
            "shutdown: the batch in hand (%d events) did not finish within the grace (%s); it is not "
            "committed and is read again at the next start",
            events,
            self.dead_letters.health() or "an output did not answer",
        )

    async def handle(self, batch: Sequence[Message]) -> BatchResult:
        async with self._lock:
            return await self._handle(batch)

    async def _handle(self, batch: Sequence[Message]) -> BatchResult:
        started = time.perf_counter()
        with self.tracer.start_as_current_span("watcher.batch") as span:
            # the engine's work in slices of the loop (watcher.service.slices), the batch lock held
            covered: dict[int, Offsets] = {}
            if self.tasks is None:
                assert isinstance(self.engine, Engine)
                values = batch.values if isinstance(batch, MessageBatch) else [m.value for m in batch]
                result = await self.slices.process(self.engine, values, Origins(batch))
            else:
                assert self.checkpoints is not None and self.checkpoints.handover is not None
                result = BatchResult()
                for partition, engine, fresh in self.checkpoints.handover.pieces(batch):
                    result.merge(await self.slices.process(engine, fresh.values, Origins(fresh)))
                    covered[partition] = next_offsets(fresh)
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
            if self.checkpoints is None:
                await self.source.commit(batch)
            else:
                # the state now covers the batch; its offsets are committed with the next checkpoint
                if self.tasks is None:
                    self.checkpoints.advance(next_offsets(batch))
                else:
                    self.checkpoints.advance_tasks(covered)
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
        if self.checkpoints is not None and decisions:
            self.checkpoints.mark_dirty(d.rollout.rollout_id for d in decisions)

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
        for stage, cpu in result.seconds.items():
            m.engine_seconds.labels(stage).inc(cpu)
        for r in result.rejected:
            m.events_rejected.labels(r.reason.value).inc()
        if result.duplicates:
            m.events_duplicate.inc(result.duplicates)
        if result.otlp is not None:
            self.metrics.count_spans(result.otlp)
        m.batch_duration.observe(seconds)
        m.batch_events.observe(len(batch))
        m.last_batch.set(time.time())
        for (topic, partition), lag in self.source.lag().items():
            m.consumer_lag.labels(topic, str(partition)).set(lag)
        self.batches_processed += 1
        self.events_consumed += len(batch)
