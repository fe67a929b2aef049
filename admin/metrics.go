package admin

import (
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/queue"
	"github.com/agentq/agentq/worker"
)

// Metrics holds the agent's Prometheus metrics. Counters that ingest and
// the journal already keep are read at scrape time (a collector), so the
// hot path pays nothing for them; per-call figures are observed as they
// happen.
type Metrics struct {
	reg *prometheus.Registry

	processed   *prometheus.CounterVec   // outcome, backend
	retries     prometheus.Counter       //
	callSeconds *prometheus.HistogramVec // backend
	waitSeconds prometheus.Histogram
	commitSecs  prometheus.Histogram
	batchSize   prometheus.Histogram

	// Relay, if set, gives the outbox relay's counters at scrape time.
	Relay func() ingest.RelayStats

	// Outcome totals, kept apart from the labelled counters for the
	// dashboard's rates.
	done, retry, stuck atomic.Uint64
}

// OutcomeCounts are the backend outcomes since start.
type OutcomeCounts struct{ Done, Retry, Stuck uint64 }

// Outcomes returns the backend outcomes since start.
func (m *Metrics) Outcomes() OutcomeCounts {
	return OutcomeCounts{m.done.Load(), m.retry.Load(), m.stuck.Load()}
}

// NewMetrics registers the agent's metrics. sources is read at scrape time.
func NewMetrics(j *queue.Journal, sources func() []ingest.Status) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.processed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agentq_processed_total", Help: "Backend outcomes: done, retry, stuck, cancelled.",
	}, []string{"outcome", "backend"})
	m.retries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "agentq_retries_total", Help: "Backend calls that failed and were scheduled again.",
	})
	m.callSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "agentq_backend_call_duration_seconds", Help: "Duration of backend calls.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
	}, []string{"backend"})
	m.waitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "agentq_dispatch_wait_seconds",
		Help:    "From a message's receipt to the start of its first backend call: journal commit, queueing behind its key and the workers.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 18),
	})
	m.commitSecs = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "agentq_journal_commit_duration_seconds", Help: "Duration of journal group commits, fsync included.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
	})
	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "agentq_journal_commit_batch_size", Help: "Operations coalesced into one journal commit.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 14),
	})
	m.reg.MustRegister(m.processed, m.retries, m.callSeconds, m.waitSeconds, m.commitSecs, m.batchSize,
		&stateCollector{m: m, j: j, sources: sources},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveCommit is the journal's OnCommit hook.
func (m *Metrics) ObserveCommit(ci queue.CommitInfo) {
	m.commitSecs.Observe(ci.Duration.Seconds())
	m.batchSize.Observe(float64(ci.Ops))
}

// ObserveResult is the worker pool's Observe hook.
func (m *Metrics) ObserveResult(r worker.Result) {
	backend := r.Backend
	if backend == "" {
		backend = "none"
	}
	backend = labelValue(backend)
	m.processed.WithLabelValues(r.Outcome, backend).Inc()
	switch r.Outcome {
	case "done":
		m.done.Add(1)
	case "retry":
		m.retry.Add(1)
	case "stuck":
		m.stuck.Add(1)
	}
	if r.Outcome == "retry" {
		m.retries.Inc()
	}
	if r.Backend != "" {
		m.callSeconds.WithLabelValues(backend).Observe(r.Duration.Seconds())
	}
	if r.Wait > 0 {
		m.waitSeconds.Observe(r.Wait.Seconds())
	}
}

var (
	descEntries    = prometheus.NewDesc("agentq_entries", "Journal entries by state: pending, retrying (pending after a failed attempt), running, done, stuck.", []string{"state"}, nil)
	descAppends    = prometheus.NewDesc("agentq_journal_appends_total", "Entries appended to the journal since start.", nil, nil)
	descCommitFail = prometheus.NewDesc("agentq_journal_commit_failures_total", "Journal commits that failed.", nil, nil)
	descReceived   = prometheus.NewDesc("agentq_received_total", "MESSAGE frames received.", []string{"source"}, nil)
	descJournaled  = prometheus.NewDesc("agentq_journaled_total", "Messages journaled.", []string{"source"}, nil)
	descAcked      = prometheus.NewDesc("agentq_acked_total", "Messages acknowledged to the broker after their commit.", []string{"source"}, nil)
	descRedeliv    = prometheus.NewDesc("agentq_redeliveries_recognised_total", "Broker redeliveries recognised as already journaled.", []string{"source"}, nil)
	descTooLong    = prometheus.NewDesc("agentq_body_too_long_total", "Messages over max_body, journaled truncated and parked.", []string{"source"}, nil)
	descConnected  = prometheus.NewDesc("agentq_source_connected", "1 when the source is connected and subscribed.", []string{"source"}, nil)
	descConnects   = prometheus.NewDesc("agentq_source_connects_total", "Successful connections (reconnects show as increments).", []string{"source"}, nil)
	descJSize      = prometheus.NewDesc("agentq_journal_size_bytes", "Bytes of the journal's pages: its file, less what bbolt preallocated.", nil, nil)
	descJFree      = prometheus.NewDesc("agentq_journal_free_bytes", "Bytes of free pages inside the journal, reused before the file grows; size less free is what the config's max_size limits.", nil, nil)
	descDamaged    = prometheus.NewDesc("agentq_journal_damaged_entries", "Entries whose stored value does not decode, parked as stuck.", nil, nil)
	descOutbox     = prometheus.NewDesc("agentq_outbox_pending", "Answers (results, replies, dead letters) waiting in the outbox to be published.", nil, nil)
	descOutboxFail = prometheus.NewDesc("agentq_outbox_failed", "Outbox messages whose publication failed at least once (unroutable, refused, broker away).", nil, nil)
	descPublished  = prometheus.NewDesc("agentq_results_published_total", "Answers the broker confirmed.", nil, nil)
	descPubFailed  = prometheus.NewDesc("agentq_results_failed_total", "Failed publications of answers (each is kept and tried again).", nil, nil)
	descRoutePause = prometheus.NewDesc("agentq_route_paused", "1 for each type pattern whose dispatch is paused.", []string{"pattern"}, nil)
	descPaused     = prometheus.NewDesc("agentq_source_paused", "1 while the source takes no frames because the journal cannot write.", []string{"source"}, nil)
)

// stateCollector reads journal and source counters at scrape time. Source
// URLs are never labels: they could carry credentials.
type stateCollector struct {
	m       *Metrics
	j       *queue.Journal
	sources func() []ingest.Status
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descEntries, descAppends, descCommitFail, descReceived, descJournaled, descAcked, descRedeliv, descTooLong, descConnected, descConnects, descPaused, descDamaged, descJSize, descJFree, descOutbox, descOutboxFail, descPublished, descPubFailed, descRoutePause} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.j.Stats()
	// The states inspect, /v1/summary and the dashboard count: a pending
	// entry that has failed before is retrying, not pending.
	for s := queue.StatePending; s <= queue.StateStuck; s++ {
		n := st.ByState[s]
		if s == queue.StatePending {
			n -= st.Retrying
		}
		ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(n), s.String())
	}
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(st.Retrying), "retrying")
	ch <- prometheus.MustNewConstMetric(descAppends, prometheus.CounterValue, float64(st.Appends))
	ch <- prometheus.MustNewConstMetric(descCommitFail, prometheus.CounterValue, float64(st.FailedCommits))
	ch <- prometheus.MustNewConstMetric(descDamaged, prometheus.GaugeValue, float64(st.Damaged))
	ch <- prometheus.MustNewConstMetric(descJSize, prometheus.GaugeValue, float64(st.Size))
	ch <- prometheus.MustNewConstMetric(descJFree, prometheus.GaugeValue, float64(st.Free))
	pending, failed := c.j.OutboxCounts()
	ch <- prometheus.MustNewConstMetric(descOutbox, prometheus.GaugeValue, float64(pending))
	ch <- prometheus.MustNewConstMetric(descOutboxFail, prometheus.GaugeValue, float64(failed))
	var rs ingest.RelayStats
	if c.m.Relay != nil {
		rs = c.m.Relay()
	}
	ch <- prometheus.MustNewConstMetric(descPublished, prometheus.CounterValue, float64(rs.Published))
	ch <- prometheus.MustNewConstMetric(descPubFailed, prometheus.CounterValue, float64(rs.Failed))
	seen := map[string]bool{}
	for _, p := range c.j.Paused() {
		p = labelValue(p)
		if seen[p] { // two patterns that differ only in bytes that are not UTF-8
			continue
		}
		seen[p] = true
		ch <- prometheus.MustNewConstMetric(descRoutePause, prometheus.GaugeValue, 1, p)
	}
	for _, s := range c.sources() {
		s.Name = labelValue(s.Name)
		ch <- prometheus.MustNewConstMetric(descReceived, prometheus.CounterValue, float64(s.Received), s.Name)
		ch <- prometheus.MustNewConstMetric(descJournaled, prometheus.CounterValue, float64(s.Journaled), s.Name)
		ch <- prometheus.MustNewConstMetric(descAcked, prometheus.CounterValue, float64(s.Acked), s.Name)
		ch <- prometheus.MustNewConstMetric(descRedeliv, prometheus.CounterValue, float64(s.Duplicates), s.Name)
		ch <- prometheus.MustNewConstMetric(descTooLong, prometheus.CounterValue, float64(s.BodyTooLong), s.Name)
		ch <- prometheus.MustNewConstMetric(descConnects, prometheus.CounterValue, float64(s.Connects), s.Name)
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, b2f(s.State == ingest.StateConnected), s.Name)
		ch <- prometheus.MustNewConstMetric(descPaused, prometheus.GaugeValue, b2f(s.Paused), s.Name)
	}
}

// labelValue makes s a valid label value: Prometheus' label values are
// UTF-8, and MustNewConstMetric panics on any other. A pause of a pattern
// with other bytes (agentq pause on a stopped agent's journal takes it as
// given) or a source named so crashed the agent at every scrape of
// /metrics. Such bytes show as U+FFFD, as /v1/paused and /v1/sources
// (JSON) show them.
func labelValue(s string) string {
	return strings.ToValidUTF8(s, "\uFFFD")
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
