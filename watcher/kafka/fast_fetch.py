"""Taking the records aiokafka has fetched out of its buffers without Python work per record.

aiokafka keeps each fetched partition as a ``FetchResult`` over a ``PartitionRecords``, whose
``_unpack_records`` generator walks the response's record batches and, per record, checks its offset
against the fetch position, wraps it in a ``ConsumerRecord``, moves ``next_fetch_offset`` and yields
it; ``FetchResult.getall`` then appends and counts each one. That is ~0.5 µs of Python per record,
around half of what watcher's source costs per event. The records themselves come out of the client's
C record batches (``DefaultRecord``: ``offset``, ``value``), which a ``list(batch)`` iterates in C.

``tune_fetcher(consumer)`` arranges, for one consumer *instance* (no aiokafka class is patched), that:

* every buffered ``PartitionRecords`` builds no ``ConsumerRecord`` (``FetchPath.BARE``): its
  ``_consumer_record`` hands the client's record on as it is (it carries ``value`` and ``offset``);
* when the client's fetcher is the code this module emulates (``FetchPath.BULK``), each buffered
  ``FetchResult`` gets a ``getall`` of its own that takes the records of a whole record batch at once
  (``_BulkRecords.take``), with the same outcome as aiokafka's loop: the same records, the same
  ``next_fetch_offset`` after every call (also when ``max_records`` cuts a record batch), control
  batches skipped, records below the fetch offset skipped, the CRC checked when ``check_crcs`` is on,
  the same error raised at the same point. Everything around it stays aiokafka's own code: the check
  that the partition is still assigned, not paused and not sought elsewhere (``check_assignment``),
  the position update (``_update_position``), ``fetched_records``, ``seek``, ``pause``, rebalances and
  a stopped consumer.

Pin-safe: the client's private layout is checked first (the fetcher's buffer table, the attributes and
the names each emulated method's code uses); anything else - another aiokafka version, deserialisers,
``isolation_level="read_committed"`` (aborted transactions are aiokafka's to skip), a generator that
already started - leaves the stock path in place, and ``tune_fetcher`` says why (``Tuning.reason``).
"""

from __future__ import annotations

import collections
import enum
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FetchPath", "Tuning", "tune_fetcher"]


class FetchPath(str, enum.Enum):
    """How a consumer's fetched records reach ``getmany``'s caller."""

    BULK = "bulk"  # whole record batches taken in C, aiokafka's positions and checks kept
    BARE = "bare"  # aiokafka's per-record loop, handing out the client's records (no ConsumerRecord)
    STOCK = "stock"  # aiokafka unchanged


@dataclass(frozen=True, slots=True)
class Tuning:
    path: FetchPath
    reason: str


# The names the emulated or relied-upon methods of aiokafka 0.14 use (``co_names``): a client whose
# code uses other names is another client, and keeps its own path.
_EXPECTED_NAMES: dict[tuple[str, str], frozenset[str]] = {
    ("FetchResult", "getall"): frozenset(
        {
            "_topic_partition",
            "check_assignment",
            "has_more",
            "_partition_records",
            "append",
            "len",
            "_update_position",
        }
    ),
    ("FetchResult", "has_more"): frozenset({"_partition_records"}),
    ("FetchResult", "_update_position"): frozenset(
        {
            "_assignment",
            "state_value",
            "_topic_partition",
            "consumed_to",
            "_partition_records",
            "next_fetch_offset",
        }
    ),
    ("PartitionRecords", "__init__"): frozenset(
        {
            "_tp",
            "_records",
            "sorted",
            "_aborted_transactions",
            "set",
            "_aborted_producers",
            "_key_deserializer",
            "_value_deserializer",
            "_check_crcs",
            "_isolation_level",
            "next_fetch_offset",
            "_unpack_records",
            "_records_iterator",
        }
    ),
    ("PartitionRecords", "__next__"): frozenset({"next", "_records_iterator", "StopIteration"}),
    ("PartitionRecords", "_unpack_records"): frozenset(
        {
            "_tp",
            "_records",
            "has_next",
            "next_batch",
            "_check_crcs",
            "validate_crc",
            "Errors",
            "CorruptRecordException",
            "_isolation_level",
            "READ_COMMITTED",
            "producer_id",
            "_consume_aborted_up_to",
            "base_offset",
            "is_control_batch",
            "_contains_abort_marker",
            "_aborted_producers",
            "discard",
            "is_transactional",
            "log",
            "debug",
            "next_offset",
            "next_fetch_offset",
            "offset",
            "_consumer_record",
        }
    ),
}


@dataclass(frozen=True, slots=True)
class _Client:
    """aiokafka's classes and constants this module works with, once they passed the layout check."""

    fetch_result: type
    partition_records: type
    unpack_code: types.CodeType
    read_uncommitted: int
    corrupt: type[Exception]


def _load_client() -> _Client | str:
    """The client's fetcher classes, or why they are not the ones this module emulates."""
    try:
        from aiokafka.consumer import fetcher
        from aiokafka.errors import CorruptRecordException
    except ImportError as exc:
        return f"aiokafka's fetcher cannot be imported ({exc})"
    classes: dict[str, Any] = {
        name: getattr(fetcher, name, None) for name in ("FetchResult", "PartitionRecords", "Fetcher")
    }
    for (cls_name, method), names in _EXPECTED_NAMES.items():
        code = getattr(getattr(classes[cls_name], method, None), "__code__", None)
        if code is None or frozenset(code.co_names) != names:
            return f"aiokafka's {cls_name}.{method} is not the code this was written against"
    fetched = getattr(getattr(classes["Fetcher"], "fetched_records", None), "__code__", None)
    if fetched is None or "getall" not in fetched.co_names:
        return "aiokafka's Fetcher.fetched_records does not take its records through getall"
    if "__slots__" in vars(classes["FetchResult"]) or "__slots__" in vars(classes["PartitionRecords"]):
        return "aiokafka's fetch buffers have no instance attributes"
    read_uncommitted = getattr(fetcher, "READ_UNCOMMITTED", None)
    if not isinstance(read_uncommitted, int):
        return "aiokafka's fetcher names no READ_UNCOMMITTED isolation level"
    return _Client(
        classes["FetchResult"],
        classes["PartitionRecords"],
        classes["PartitionRecords"]._unpack_records.__code__,
        read_uncommitted,
        CorruptRecordException,
    )


_CLIENT: _Client | str | None = None


def _client() -> _Client | str:
    global _CLIENT
    if _CLIENT is None:
        _CLIENT = _load_client()
    return _CLIENT


def tune_fetcher(consumer: Any) -> Tuning:
    """Arrange the fetched records of this started consumer to be taken in bulk (or at least bare).

    Call it once the consumer is started (its fetcher exists); buffers already fetched are included.
    Calling it again is harmless.
    """
    fetcher: Any = getattr(consumer, "_fetcher", None)
    buffered = getattr(fetcher, "_records", None)
    if isinstance(buffered, _BareBuffers):
        return Tuning(buffered.path, "already tuned")
    if type(buffered) is not collections.OrderedDict:
        return Tuning(FetchPath.STOCK, "the client keeps its fetched records in a way this does not know")
    if getattr(fetcher, "_key_deserializer", True) or getattr(fetcher, "_value_deserializer", True):
        return Tuning(
            FetchPath.STOCK, "the consumer deserialises keys or values (its records must carry them)"
        )
    client = _client()
    table: _BareBuffers
    if isinstance(client, str):
        table, reason = _BareBuffers(), client
    elif getattr(fetcher, "_isolation_level", None) != client.read_uncommitted:
        table, reason = (
            _BareBuffers(),
            "isolation_level is not read_uncommitted: aiokafka skips aborted transactions",
        )
    else:
        table, reason = _BulkBuffers(client), "record batches taken whole"
    for tp, result in buffered.items():  # buffers fetched while the consumer started
        table[tp] = result
    fetcher._records = table
    return Tuning(table.path, reason)


class _BareBuffers(collections.OrderedDict[Any, Any]):
    """The fetcher's buffer table, preparing each buffer it receives (also those that arrive while
    ``getmany`` waits)."""

    path = FetchPath.BARE

    def __setitem__(self, tp: Any, result: Any) -> None:
        _bare(result)
        super().__setitem__(tp, result)


class _BulkBuffers(_BareBuffers):
    path = FetchPath.BULK

    def __init__(self, client: _Client) -> None:
        super().__init__()
        self._fetch_result: Any = client.fetch_result
        self._getall = _BulkGetall(client)

    def __setitem__(self, tp: Any, result: Any) -> None:
        if _bare(result) and type(result) is self._fetch_result:  # not a FetchError
            # this result's own getall (an instance attribute), dropped when the result is used up
            result.getall = types.MethodType(self._getall, result)
        collections.OrderedDict.__setitem__(self, tp, result)


def _bare(result: Any) -> bool:
    state = getattr(getattr(result, "_partition_records", None), "__dict__", None)
    if state is not None and "_records_iterator" in state:
        state["_consumer_record"] = _AS_IS
        return True
    return False


_AS_IS: Callable[[Any, Any], Any] = {}.get  # (tp, record) -> record, from C: a lookup in an empty dict


class _BulkGetall:
    """``FetchResult.getall`` (aiokafka 0.14) with the per-record loop replaced by ``_BulkRecords``."""

    __slots__ = ("_client",)

    def __init__(self, client: _Client) -> None:
        self._client = client

    def __call__(self, result: Any, max_records: int | None = None) -> list[Any]:
        if not result.check_assignment(result._topic_partition) or not result.has_more():
            _done(result)  # dropped (paused, sought, revoked) or used up: aiokafka forgets it
            return []
        records = result._partition_records
        bulk = records._records_iterator
        if type(bulk) is not _BulkRecords:
            bulk = _BulkRecords.take_over(records, self._client)
            if bulk is None:  # not a buffer this can take over: aiokafka's own getall from here on
                _done(result)
                return result.getall(max_records)
        taken, exhausted = bulk.take(max_records)
        result._update_position()
        if exhausted:
            result._partition_records = None
            records._records_iterator = None  # as aiokafka does at the end (no reference cycle)
            _done(result)
        return taken


def _done(result: Any) -> None:
    result.__dict__.pop("getall", None)  # the bound method refers to the result: break the cycle


_EMPTY: list[Any] = []


class _BulkRecords:
    """The walk of ``PartitionRecords._unpack_records`` one record batch at a time.

    It stands in the ``PartitionRecords``' ``_records_iterator``, so aiokafka's own per-record calls
    (``getone``, or its ``getall``) still work from wherever the bulk calls left off.

    State between calls, as the generator's: the current record batch's records not handed out yet
    (``_buf[_pos:]``) and that batch's ``next_offset``, which the generator assigns to
    ``next_fetch_offset`` only when it is resumed after the batch's last record (so a ``max_records``
    cut just after that record leaves the position at last offset + 1, as aiokafka does).
    """

    __slots__ = (
        "_records",
        "_owner",
        "_tp",
        "_check_crcs",
        "_corrupt",
        "_buf",
        "_pos",
        "_batch_next",
        "_error",
        "_dead",
    )

    def __init__(self, owner: Any, client: _Client) -> None:
        self._owner = owner
        self._records = owner._records
        self._tp = owner._tp
        self._check_crcs = owner._check_crcs
        self._corrupt = client.corrupt
        self._buf: list[Any] = _EMPTY
        self._pos = 0
        self._batch_next: int | None = None
        self._error: Exception | None = None
        self._dead = False

    @classmethod
    def take_over(cls, owner: Any, client: _Client) -> _BulkRecords | None:
        """Replace ``owner``'s record generator if it has not started (else None: not ours to take)."""
        state = owner.__dict__
        gen = state.get("_records_iterator")
        if (
            type(owner) is not client.partition_records
            or type(gen) is not types.GeneratorType
            or gen.gi_code is not client.unpack_code
            or inspect.getgeneratorstate(gen) != inspect.GEN_CREATED
            or state.get("_isolation_level") != client.read_uncommitted
            or state.get("_key_deserializer")
            or state.get("_value_deserializer")
            or state.get("_consumer_record") is not _AS_IS
            or not hasattr(state.get("_records"), "next_batch")
        ):
            return None
        bulk = cls(owner, client)
        gen.close()
        state["_records_iterator"] = bulk
        return bulk

    def take(self, max_records: int | None) -> tuple[list[Any], bool]:
        """Up to ``max_records`` records (None: all), and whether the buffer is used up.

        ``next_fetch_offset`` ends where aiokafka's loop leaves it after handing out the same records;
        an error (CRC, a corrupt batch) is raised at the same point and ends the walk, as it ends the
        generator (aiokafka then re-fetches from the consumed position).
        """
        if self._dead:
            return [], True
        want = None if max_records is None else max(max_records, 1)  # aiokafka hands out one at 0
        owner = self._owner
        out: list[Any] = []
        buf, pos = self._buf, self._pos
        try:
            while True:
                left = len(buf) - pos
                if left:
                    if want is not None and left >= want - len(out):
                        end = pos + want - len(out)
                        out += buf[pos:end]
                        owner.next_fetch_offset = buf[end - 1].offset + 1
                        if end == len(buf):
                            self._buf, self._pos = _EMPTY, 0
                        else:
                            self._pos = end
                        return out, False
                    out += buf[pos:] if pos else buf
                    owner.next_fetch_offset = buf[-1].offset + 1
                    buf, pos = _EMPTY, 0
                    self._buf, self._pos = _EMPTY, 0
                if self._error is not None:  # where aiokafka's loop reaches the corrupt record
                    raise self._error
                # the record batch is done: where the generator goes when resumed after its last record
                if self._batch_next is not None:
                    owner.next_fetch_offset, self._batch_next = self._batch_next, None
                records = self._records
                if not records.has_next():
                    self._end()
                    return out, True
                batch = records.next_batch()
                if self._check_crcs and not batch.validate_crc():
                    raise self._corrupt(f"Invalid CRC - {self._tp}")
                if batch.is_control_batch:  # skipped at any isolation level
                    owner.next_fetch_offset = batch.next_offset
                    continue
                buf = []
                try:
                    buf.extend(batch)  # the records, made in C
                except Exception as exc:  # a corrupt record: aiokafka yields those before it first
                    self._error = exc
                if buf:
                    buf = _at_or_after(buf, owner.next_fetch_offset)
                self._buf, self._batch_next = buf, batch.next_offset
        except BaseException:
            self._end()  # as a generator that raised: used up
            raise

    def _end(self) -> None:
        self._dead = True
        self._buf, self._pos, self._batch_next, self._error = _EMPTY, 0, None, None
        self._records = None

    # aiokafka's per-record protocol (``next(partition_records)``), from where the bulk calls are
    def __iter__(self) -> _BulkRecords:
        return self

    def __next__(self) -> Any:
        taken, _ = self.take(1)
        if not taken:
            raise StopIteration
        owner = self._owner
        return owner._consumer_record(owner._tp, taken[0])


def _at_or_after(records: list[Any], offset: int) -> list[Any]:
    """The records aiokafka's loop yields from one record batch, starting at fetch offset ``offset``:
    each record not below the offset after the last one yielded (records below it are the front of a
    compressed batch or of a batch the fetch started inside)."""
    first = records[0].offset
    if records[-1].offset - first == len(records) - 1:
        # consecutive offsets, as a producer writes them (base offset + deltas 0..n-1): a slice
        return records[offset - first :] if first < offset else records
    kept = []  # a compacted batch (gaps): record by record, as aiokafka does
    for r in records:
        if r.offset >= offset:
            kept.append(r)
            offset = r.offset + 1
    return kept
