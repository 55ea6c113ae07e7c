"""Metrics per data class and per cloud, the way Velero, kopia and the pgBackRest / restic exporters export
theirs: last success, age against the RPO, bytes and objects uploaded, step durations, outcomes, restore
drills, cloud canaries. Two paths:

- **Prometheus, computed from the catalog at scrape time** (`exposition`, served by the status plugin at
  `GET /wedsync-dr/metrics`): a fresh `CollectorRegistry` per scrape holding one `CatalogCollector`, never
  the process-global registry, so every api-server (and one restarted a minute ago) answers the same. Counters
  are sums over append-only history (`backup_steps`, `drills`): they only go up while that history is kept.
  When the catalog cannot be read, `wedsync_dr_catalog_up` is 0 and nothing else is exposed (no stale zeros).
- **Airflow's own metrics** (`AirflowEmitter`, called by the tasks in `wedsync_dr.wiring`): the same events
  as they happen, through whatever `[metrics]` configures (StatsD, OpenTelemetry, or nothing), named
  `wedsync_dr.*` with the data class and cloud as tags, as Airflow 3 names its own metrics; with
  `[metrics] legacy_names_on` (Airflow's default) also under names that carry them
  (`wedsync_dr.backup.upload.bytes.<class>.<cloud>`), for StatsD servers without tags.

Only the policy's data classes and clouds are exposed. Importable without Airflow: the emitter is handed
Airflow's stats module (or anything with its `incr`, `gauge` and `timing`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from wedsync_dr.policy import Policy

log = logging.getLogger(__name__)

BACKUP_STATUSES = ("running", "validated", "degraded", "failed", "deleted", "abandoned")  # the catalog's CHECK
OUTCOMES = ("validated", "degraded", "failed")  # how a backup run ends (its validate step)
TIMED_STEPS = ("extract", "encrypt", "validate")  # per class; uploads are timed per class and cloud
GOOD = ("validated", "degraded")


# ----------------------------------------------------------------------------- what the tasks record


@dataclass(frozen=True)
class BackupStep:
    """One finished step of a backup run, as its task saw it."""

    backup_id: str
    data_class: str
    step: str  # extract | encrypt | upload | validate
    seconds: float
    cloud: str | None = None  # upload: the cloud written to
    size: int | None = None  # bytes: extract compressed, encrypt ciphertext, upload sent
    objects: int | None = None
    outcome: str | None = None  # validate: validated | degraded | failed

    def record(self, conn) -> None:
        """Into the catalog's backup_steps (what the Prometheus counters sum)."""
        from wedsync_dr import catalog

        catalog.record_backup_step(conn, backup_id=self.backup_id, data_class=self.data_class, step=self.step,
                                   seconds=self.seconds, cloud=self.cloud, size=self.size, objects=self.objects,
                                   outcome=self.outcome)


def outcome_of(conn, backup_id: str) -> str:
    """How a backup run ended, read after its validate: its catalog status when it committed (validated or
    degraded), else failed -- also when the catalog cannot say."""
    from wedsync_dr import catalog

    try:
        status = catalog.backup_statuses(conn, [backup_id]).get(backup_id)
    except Exception as err:  # noqa: BLE001 - called while validate may be failing: never mask its error
        log.warning("metrics: the status of %s is unknown (%s: %s): counted as failed", backup_id,
                    type(err).__name__, err)
        status = None
    return status if status in GOOD else "failed"


# ----------------------------------------------------------------------------- Prometheus, from the catalog


@dataclass
class CatalogReadings:
    """What one scrape reads from the catalog (the rows of the catalog.py queries named beside each field)."""

    now: dt.datetime
    good_backup_times: list[tuple]  # good_backup_times: (data_class, newest good started_at, newest finished_at)
    backup_counts: list[tuple]  # backup_counts: (data_class, status, count)
    step_totals: list[tuple]  # backup_step_totals: (class, step, cloud, outcome, count, seconds, bytes, objects)
    latest_steps: list[tuple]  # latest_backup_steps: (data_class, step, cloud, seconds, finished_at)
    drill_totals: list[tuple]  # drill_totals: (data_class, ok, count)
    latest_drills: list[tuple]  # latest_drills: (data_class, drilled_at, ok, seconds)
    cloud_health: list[tuple]  # cloud_health: (cloud, healthy, failures_in_a_row, latency_ms, checked_at, error)


def read_catalog(conn, now: dt.datetime | None = None) -> CatalogReadings:
    from wedsync_dr import catalog

    return CatalogReadings(
        now=now or dt.datetime.now(dt.UTC), good_backup_times=catalog.good_backup_times(conn),
        backup_counts=catalog.backup_counts(conn), step_totals=catalog.backup_step_totals(conn),
        latest_steps=catalog.latest_backup_steps(conn), drill_totals=catalog.drill_totals(conn),
        latest_drills=catalog.latest_drills(conn), cloud_health=catalog.cloud_health(conn))


class CatalogCollector:
    """A prometheus_client custom collector: every family is built from `read()`'s readings at collect time."""

    def __init__(self, policy: Policy, read: Callable[[], CatalogReadings]):
        self.policy = policy
        self.read = read

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("wedsync_dr_catalog_up", "1 when this scrape read the backup catalog; 0 when it "
                                                        "could not (every other wedsync_dr metric is then absent)")
        try:
            readings = self.read()
        except Exception:  # logged with its traceback: a scrape reports the catalog down rather than failing
            log.exception("metrics: cannot read the backup catalog")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._backup_families(readings)
        yield from self._step_families(readings)
        yield from self._drill_families(readings)
        yield from self._cloud_families(readings)

    def _backup_families(self, readings: CatalogReadings) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        classes = sorted(self.policy.data_classes)
        rpo = GaugeMetricFamily("wedsync_dr_rpo_seconds", "The class's recovery point objective (policy "
                                                          "rpo_minutes)", labels=["data_class"])
        last = GaugeMetricFamily("wedsync_dr_last_success_timestamp_seconds",
                                 "When the class's newest good (validated or degraded) backup committed, Unix time",
                                 labels=["data_class"])
        age = GaugeMetricFamily("wedsync_dr_backup_age_seconds",
                                "Seconds since the class's newest good backup started: what its RPO is measured "
                                "against (absent while it has none)", labels=["data_class"])
        within = GaugeMetricFamily("wedsync_dr_within_rpo", "1 while the class's newest good backup is within "
                                                            "its RPO, else 0 (also when it has none)",
                                   labels=["data_class"])
        times = {c: (started, finished) for c, started, finished in readings.good_backup_times}
        for name in classes:
            rpo_seconds = self.policy.data_classes[name].rpo_minutes * 60
            rpo.add_metric([name], rpo_seconds)
            started, finished = times.get(name, (None, None))
            if finished is not None:
                last.add_metric([name], finished.timestamp())
            age_seconds = (readings.now - started).total_seconds() if started is not None else None
            if age_seconds is not None:
                age.add_metric([name], age_seconds)
            within.add_metric([name], 1 if age_seconds is not None and age_seconds <= rpo_seconds else 0)
        yield from (rpo, last, age, within)

        now_held = GaugeMetricFamily("wedsync_dr_catalog_backups",
                                     "Backups in the catalog by their status now (repair turns degraded into "
                                     "validated, retention marks deleted)", labels=["data_class", "status"])
        counts = {(c, s): n for c, s, n in readings.backup_counts}
        for name in classes:
            for status in BACKUP_STATUSES:
                now_held.add_metric([name, status], counts.get((name, status), 0))
        yield now_held

        ended = CounterMetricFamily("wedsync_dr_backups", "Backup runs by how they ended at validate: validated "
                                                          "(every cloud), degraded (the quorum, not every cloud), "
                                                          "failed (below the quorum, or not uploaded)",
                                    labels=["data_class", "status"])
        outcomes = dict.fromkeys(((c, o) for c in classes for o in OUTCOMES), 0)
        for name, step, _cloud, outcome, count, *_ in readings.step_totals:
            if step == "validate" and (name, outcome) in outcomes:
                outcomes[name, outcome] += count
        for (name, outcome), count in outcomes.items():
            ended.add_metric([name, outcome], count)
        yield ended

    def _step_families(self, readings: CatalogReadings) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

        classes, clouds = sorted(self.policy.data_classes), list(self.policy.cloud_names)
        steps = SummaryMetricFamily("wedsync_dr_step_duration_seconds",
                                    "Durations of the backup steps extract, encrypt and validate (count and sum over "
                                    "every recorded run)", labels=["data_class", "step"])
        uploads = SummaryMetricFamily("wedsync_dr_upload_duration_seconds",
                                      "Durations of the uploads to one cloud (count and sum over every recorded run)",
                                      labels=["data_class", "cloud"])
        sent_bytes = CounterMetricFamily("wedsync_dr_uploaded_bytes", "Ciphertext bytes uploaded (blobs a cloud "
                                                                      "already held are not sent again)",
                                         labels=["data_class", "cloud"])
        sent_objects = CounterMetricFamily("wedsync_dr_uploaded_objects", "Objects uploaded",
                                           labels=["data_class", "cloud"])
        timed = {(c, s): [0, 0.0] for c in classes for s in TIMED_STEPS}
        sent = {(c, cloud): [0, 0.0, 0, 0] for c in classes for cloud in clouds}  # count, seconds, bytes, objects
        for name, step, cloud, _outcome, count, seconds, size, objects in readings.step_totals:
            if step == "upload" and (name, cloud) in sent:
                totals = sent[name, cloud]
                totals[0] += count
                totals[1] += seconds
                totals[2] += size
                totals[3] += objects
            elif (name, step) in timed:
                timed[name, step][0] += count
                timed[name, step][1] += seconds
        for (name, step), (count, seconds) in timed.items():
            steps.add_metric([name, step], count, seconds)
        for (name, cloud), (count, seconds, size, objects) in sent.items():
            uploads.add_metric([name, cloud], count, seconds)
            sent_bytes.add_metric([name, cloud], size)
            sent_objects.add_metric([name, cloud], objects)
        yield from (steps, uploads, sent_bytes, sent_objects)

        last_step = GaugeMetricFamily("wedsync_dr_last_step_duration_seconds",
                                      "Duration of the class's newest recorded extract, encrypt or validate",
                                      labels=["data_class", "step"])
        last_upload = GaugeMetricFamily("wedsync_dr_last_upload_duration_seconds",
                                        "Duration of the class's newest recorded upload to the cloud",
                                        labels=["data_class", "cloud"])
        for name, step, cloud, seconds, _at in sorted(readings.latest_steps, key=lambda r: (r[0], r[1], r[2] or "")):
            if step == "upload" and (name, cloud) in sent:
                last_upload.add_metric([name, cloud], seconds)
            elif (name, step) in timed:
                last_step.add_metric([name, step], seconds)
        yield from (last_step, last_upload)

    def _drill_families(self, readings: CatalogReadings) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        classes = sorted(self.policy.data_classes)
        drills = CounterMetricFamily("wedsync_dr_drills", "Restore drills by result (passed or failed)",
                                     labels=["data_class", "result"])
        results = dict.fromkeys(((c, r) for c in classes for r in ("passed", "failed")), 0)
        for name, ok, count in readings.drill_totals:
            key = (name, "passed" if ok else "failed")
            if key in results:
                results[key] += count
        for (name, result), count in results.items():
            drills.add_metric([name, result], count)
        yield drills

        passed = GaugeMetricFamily("wedsync_dr_drill_last_success", "1 when the class's newest restore drill passed, "
                                                                    "0 when it failed (absent: never drilled)",
                                   labels=["data_class"])
        seconds = GaugeMetricFamily("wedsync_dr_drill_last_duration_seconds", "Duration of the class's newest drill",
                                    labels=["data_class"])
        when = GaugeMetricFamily("wedsync_dr_drill_last_timestamp_seconds", "When the class's newest drill ran, "
                                                                            "Unix time", labels=["data_class"])
        for name, drilled_at, ok, duration in sorted(readings.latest_drills):
            if name not in self.policy.data_classes:
                continue
            passed.add_metric([name], 1 if ok else 0)
            when.add_metric([name], drilled_at.timestamp())
            if duration is not None:
                seconds.add_metric([name], duration)
        yield from (passed, seconds, when)

    def _cloud_families(self, readings: CatalogReadings) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        healthy = GaugeMetricFamily("wedsync_dr_cloud_healthy", "1 while backup_health counts the cloud healthy, 0 "
                                                                "after 3 failed canaries in a row (absent: never "
                                                                "checked)", labels=["cloud"])
        failures = GaugeMetricFamily("wedsync_dr_cloud_failures_in_a_row", "Failed canaries in a row",
                                     labels=["cloud"])
        latency = GaugeMetricFamily("wedsync_dr_cloud_canary_latency_seconds",
                                    "The newest canary's write + read back + delete of 1 KiB", labels=["cloud"])
        checked = GaugeMetricFamily("wedsync_dr_cloud_last_check_timestamp_seconds", "When the newest canary ran, "
                                                                                     "Unix time", labels=["cloud"])
        for cloud, is_healthy, in_a_row, latency_ms, checked_at, _error in sorted(readings.cloud_health):
            if cloud not in self.policy.cloud_names:
                continue
            healthy.add_metric([cloud], 1 if is_healthy else 0)
            failures.add_metric([cloud], in_a_row)
            if latency_ms is not None:
                latency.add_metric([cloud], latency_ms / 1000)
            checked.add_metric([cloud], checked_at.timestamp())
        yield from (healthy, failures, latency, checked)


def exposition(policy: Policy, read: Callable[[], CatalogReadings]) -> bytes:
    """The Prometheus text format (0.0.4) of everything `read()` gives, from a registry of its own."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)  # never the global one: nothing of this process leaks in
    registry.register(CatalogCollector(policy, read))
    return generate_latest(registry)


def catalog_exposition(policy: Policy, connect: Callable[[], Any]) -> bytes:
    """`exposition` of the catalog reached through `connect` (a connection per scrape, closed after it)."""
    def read() -> CatalogReadings:
        with connect() as conn:
            return read_catalog(conn)

    return exposition(policy, read)


# ----------------------------------------------------------------------------- Airflow's metrics, from the tasks


def _never_raises(method):
    """A metric that cannot be sent is logged: it never fails the task that is backing something up."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001 - see above
            log.warning("metrics: %s not sent: %s: %s", method.__name__, type(err).__name__, err)

    return guarded


class AirflowEmitter:
    """Sends wedsync_dr's events through Airflow's stats module (`airflow.sdk.observability.stats`)."""

    def __init__(self, stats, *, names_with_labels: bool = False, clock: Callable[[], float] = time.time):
        self.stats = stats
        self.names_with_labels = names_with_labels
        self.clock = clock

    def _send(self, kind: str, name: str, value: Any, **labels: str) -> None:
        send = getattr(self.stats, kind)  # incr(stat, count), gauge(stat, value), timing(stat, dt)
        send(f"wedsync_dr.{name}", value, tags=labels)
        if self.names_with_labels:
            send(".".join([f"wedsync_dr.{name}", *labels.values()]), value)

    @_never_raises
    def step(self, step: BackupStep) -> None:
        labels = {"data_class": step.data_class, **({"cloud": step.cloud} if step.cloud else {})}
        self._send("timing", f"backup.{step.step}.duration", dt.timedelta(seconds=step.seconds), **labels)
        if step.step == "upload":
            self._send("incr", "backup.upload.bytes", step.size or 0, **labels)
            self._send("incr", "backup.upload.objects", step.objects or 0, **labels)
        if step.step == "validate" and step.outcome:
            self._send("incr", f"backup.{step.outcome}", 1, **labels)
            if step.outcome in GOOD:
                self._send("gauge", "backup.last_success_timestamp", self.clock(), **labels)

    @_never_raises
    def backup_age(self, data_class: str, age_seconds: float | None, rpo_seconds: float) -> None:
        """What the RPO watch measured (a class never backed up sends no age)."""
        if age_seconds is not None:
            self._send("gauge", "backup.age_seconds", age_seconds, data_class=data_class)
        self._send("gauge", "backup.rpo_seconds", rpo_seconds, data_class=data_class)

    @_never_raises
    def drill(self, result: dict[str, Any]) -> None:
        """A drill_class result; one with nothing to drill (`ok` None) sends nothing."""
        if result.get("ok") is None:
            return
        name = result["data_class"]
        self._send("incr", f"drill.{'passed' if result['ok'] else 'failed'}", 1, data_class=name)
        self._send("gauge", "drill.last_success", 1 if result["ok"] else 0, data_class=name)
        self._send("timing", "drill.duration", dt.timedelta(seconds=result["seconds"]), data_class=name)

    @_never_raises
    def canary(self, cloud: str, *, ok: bool, latency_ms: float, healthy: bool) -> None:
        """One canary's result, and the cloud's health after it."""
        self._send("timing", "cloud.canary.latency", dt.timedelta(milliseconds=latency_ms), cloud=cloud)
        self._send("incr", f"cloud.canary.{'ok' if ok else 'failed'}", 1, cloud=cloud)
        self._send("gauge", "cloud.healthy", 1 if healthy else 0, cloud=cloud)
