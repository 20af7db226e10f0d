// Package metrics defines every Prometheus metric the connector exports, in
// one place: names and help texts are part of the connector's interface.
// Labels stay bounded: topic, partition, table, outcome, class, state —
// never offsets or keys.
//
// The seed's ten names are kept with their meanings:
//
//	sink_writes_total{outcome}               sink write attempts, one transaction each (outcome: ok, error)
//	sink_write_latency_seconds               duration of one sink write attempt
//	mds_coord_items_submitted_total          records submitted to the queue
//	mds_coord_items_dropped_total{reason}    records dropped from the queue (to the dead letters)
//	mds_coord_queue_depth                    records queued now
//	mds_coord_workers_alive                  worker goroutines running
//	mds_coord_circuit_state                  0 closed, 1 half-open, 2 open
//	mds_worker_batches_written_total         batches landed
//	mds_worker_write_errors_total{class}     failed batch attempts by error class
//	mds_worker_write_latency_seconds         batch latency, WAL append to WAL applied
package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics holds the connector's collectors. Safe for concurrent use.
type Metrics struct {
	SinkWrites         *prometheus.CounterVec
	SinkWriteLatency   prometheus.Histogram
	ItemsSubmitted     prometheus.Counter
	ItemsDropped       *prometheus.CounterVec
	QueueDepth         prometheus.Gauge
	QueueCapacity      prometheus.Gauge
	QueueHighWatermark prometheus.Gauge
	QueueLowWatermark  prometheus.Gauge
	QueueBytes         prometheus.Gauge
	InflightBytes      prometheus.Gauge
	MaxBytes           prometheus.Gauge
	WorkersAlive       prometheus.Gauge
	CircuitState       prometheus.Gauge
	BatchesWritten     prometheus.Counter
	WriteErrors        *prometheus.CounterVec
	WorkerLatency      prometheus.Histogram

	BatchSize          prometheus.Histogram
	RecordsConsumed    *prometheus.CounterVec
	RecordsWritten     *prometheus.CounterVec
	RecordsDeadLetter  *prometheus.CounterVec
	Tombstones         *prometheus.CounterVec
	EndToEndLatency    prometheus.Histogram
	ConsumerLag        *prometheus.GaugeVec
	OffsetCommits      *prometheus.CounterVec
	Rebalances         *prometheus.CounterVec
	PausedPartitions   prometheus.Gauge
	FetchPaused        prometheus.Gauge
	Retries            prometheus.Counter
	BreakerTransitions *prometheus.CounterVec
	WALPending         prometheus.Gauge
	WALFileBytes       prometheus.Gauge
	WALInDoubt         prometheus.Counter
	DeadLetterFailures prometheus.Counter
	BatchesAbandoned   *prometheus.CounterVec
}

// New creates the collectors and registers them on reg (nil: not
// registered, for tests).
func New(reg prometheus.Registerer) *Metrics {
	lat := []float64{.001, .002, .005, .01, .02, .03, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10}
	m := &Metrics{
		// the seed's ten (see the package documentation)
		SinkWrites:       counterVec("sink_writes_total", "Sink write attempts (one transaction each), by outcome (ok, error).", "outcome"),
		SinkWriteLatency: histogram("sink_write_latency_seconds", "Duration of one sink write attempt (one transaction).", lat),
		ItemsSubmitted:   counter("mds_coord_items_submitted_total", "Records submitted to the coordinator queue."),
		ItemsDropped:     counterVec("mds_coord_items_dropped_total", "Records dropped from the queue by the overflow strategy (they go to the dead letters), by reason.", "reason"),
		QueueDepth:       gauge("mds_coord_queue_depth", "Records in the coordinator queue now."),
		WorkersAlive:     gauge("mds_coord_workers_alive", "Worker goroutines running."),
		CircuitState:     gauge("mds_coord_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open."),
		BatchesWritten:   counter("mds_worker_batches_written_total", "Batches landed (database commit and WAL applied)."),
		WriteErrors:      counterVec("mds_worker_write_errors_total", "Failed batch write attempts, by error class.", "class"),
		WorkerLatency:    histogram("mds_worker_write_latency_seconds", "Batch latency from WAL append to WAL applied, retries included.", lat),

		// the queue, its watermarks and the byte budget
		QueueCapacity:      gauge("mds_coord_queue_capacity", "Capacity of the coordinator queue, in records."),
		QueueHighWatermark: gauge("mds_coord_queue_high_watermark", "Queue depth at which fetching pauses, in records."),
		QueueLowWatermark:  gauge("mds_coord_queue_low_watermark", "Queue depth below which fetching resumes, in records."),
		QueueBytes:         gauge("mds_coord_queue_bytes", "Record bytes (keys, values, headers) in the coordinator queue now."),
		InflightBytes:      gauge("ktsink_inflight_bytes", "Record bytes taken from the queue and not yet ended: in batches being written, and dropped records waiting for their dead letters."),
		MaxBytes:           gauge("ktsink_max_bytes", "The byte budget (coordinator.max_bytes): queued plus in-flight record bytes pause fetching at its high watermark share."),

		// records and batches
		BatchSize:          histogram("ktsink_batch_records", "Records per batch.", prometheus.ExponentialBuckets(1, 4, 8)),
		RecordsConsumed:    counterVec("ktsink_records_consumed_total", "Records fetched from Kafka, by topic.", "topic"),
		RecordsWritten:     counterVec("ktsink_records_written_total", "Records landed in the database, by topic.", "topic"),
		RecordsDeadLetter:  counterVec("ktsink_records_dead_lettered_total", "Records sent to the dead letters, by topic and error class.", "topic", "class"),
		Tombstones:         counterVec("ktsink_tombstones_total", "Tombstone records (null value), by topic and action (deleted, skipped).", "topic", "action"),
		EndToEndLatency:    histogram("ktsink_end_to_end_latency_seconds", "Record timestamp to offset commit, sampled at the last record of each partition per commit.", lat),
		Retries:            counter("ktsink_retries_total", "Batch write retries after transient errors."),
		BreakerTransitions: counterVec("ktsink_breaker_transitions_total", "Circuit breaker transitions, by state entered.", "to"),
		BatchesAbandoned:   counterVec("ktsink_batches_abandoned_total", "Batches given up for some or all of their partitions, their records there left unwritten and uncommitted for the partitions' next owner, by reason: revoked (revoked while the batch waited past coordinator.revoke_timeout), fenced (another process owns the exactly_once partitions).", "reason"),

		// Kafka: lag, commits, rebalances, backpressure
		ConsumerLag:      gaugeVec("ktsink_consumer_lag_records", "Records between the committed offset and the log end, by topic and partition.", "topic", "partition"),
		OffsetCommits:    counterVec("ktsink_offset_commits_total", "Offset commits to Kafka, by outcome (ok, error).", "outcome"),
		Rebalances:       counterVec("ktsink_rebalances_total", "Partition assignment changes, by kind (assigned, revoked, lost).", "kind"),
		PausedPartitions: gauge("ktsink_paused_partitions", "Partitions whose fetching is paused now."),
		FetchPaused:      gauge("ktsink_fetch_paused", "1 while fetching is paused by backpressure or an open breaker."),

		// the WAL and the dead letters
		WALPending:         gauge("ktsink_wal_pending_batches", "Batches in the WAL not yet applied."),
		WALFileBytes:       gauge("ktsink_wal_file_bytes", "Size of the WAL file."),
		WALInDoubt:         counter("ktsink_wal_in_doubt_batches_total", "Batches found pending in the WAL on assignment (re-read and re-applied)."),
		DeadLetterFailures: counter("ktsink_dead_letter_write_failures_total", "Failed attempts to make dead letters durable (file or topic); the records they carry are held, their offsets not committed, and retried."),
	}
	if reg != nil {
		for _, c := range m.collectors() {
			reg.MustRegister(c)
		}
	}
	return m
}

// counter, counterVec, gauge, gaugeVec and histogram create a collector
// from its name, help text and labels (or buckets), for New's table.
func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

func gauge(name, help string) prometheus.Gauge {
	return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
}

func gaugeVec(name, help string, labels ...string) *prometheus.GaugeVec {
	return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, labels)
}

func histogram(name, help string, buckets []float64) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets})
}

// Classes are the label values of mds_worker_write_errors_total.
var Classes = []string{"transient", "permanent", "dead_letter"}

// Init creates every labelled series the connector may use for these
// topics at zero, so that dashboards and alerts see them from the start
// rather than from the first event.
func (m *Metrics) Init(topics []string) {
	for _, o := range []string{"ok", "error"} {
		m.SinkWrites.WithLabelValues(o)
		m.OffsetCommits.WithLabelValues(o)
	}
	m.ItemsDropped.WithLabelValues("overflow")
	for _, c := range Classes {
		m.WriteErrors.WithLabelValues(c)
	}
	for _, k := range []string{"assigned", "revoked", "lost"} {
		m.Rebalances.WithLabelValues(k)
	}
	for _, s := range []string{"closed", "half_open", "open"} {
		m.BreakerTransitions.WithLabelValues(s)
	}
	for _, r := range []string{"revoked", "fenced"} {
		m.BatchesAbandoned.WithLabelValues(r)
	}
	for _, t := range topics {
		m.RecordsConsumed.WithLabelValues(t)
		m.RecordsWritten.WithLabelValues(t)
		for _, c := range []string{"decode", "data", "overflow"} {
			m.RecordsDeadLetter.WithLabelValues(t, c)
		}
		for _, a := range []string{"deleted", "skipped"} {
			m.Tombstones.WithLabelValues(t, a)
		}
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.SinkWrites, m.SinkWriteLatency, m.ItemsSubmitted, m.ItemsDropped, m.QueueDepth,
		m.QueueCapacity, m.QueueHighWatermark, m.QueueLowWatermark, m.QueueBytes, m.InflightBytes, m.MaxBytes, m.WorkersAlive,
		m.CircuitState, m.BatchesWritten, m.WriteErrors, m.WorkerLatency, m.BatchSize,
		m.RecordsConsumed, m.RecordsWritten, m.RecordsDeadLetter, m.Tombstones,
		m.EndToEndLatency, m.ConsumerLag, m.OffsetCommits, m.Rebalances, m.PausedPartitions,
		m.FetchPaused, m.Retries, m.BreakerTransitions, m.WALPending, m.WALFileBytes, m.WALInDoubt,
		m.DeadLetterFailures, m.BatchesAbandoned,
	}
}

// Names lists the name of every metric the connector exports.
func Names() []string {
	m := New(nil)
	var names []string
	for _, c := range m.collectors() {
		ch := make(chan *prometheus.Desc, 4)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			names = append(names, DescName(d))
		}
	}
	return names
}

// DescName returns the fully qualified name of the metric d describes
// (prometheus.Desc keeps it unexported; its String form shows it quoted,
// and a metric name holds no quote), or "" if it cannot be read.
func DescName(d *prometheus.Desc) string {
	_, rest, ok := strings.Cut(d.String(), `fqName: "`)
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, `"`)
	return name
}
