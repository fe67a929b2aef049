package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/agentq/agentq/internal/brokertest"
)

// The whole-pipeline benchmarks run the real binary, as users do, against
// bare consumers of the same library in the same run. Each consumer is a
// process of its own, so CPU per message is the process's user+sys time
// over the messages it handled, read from /proc.

const stompAddr = "127.0.0.1:61613"

// pipelineN is the number of messages per consumer (AGENTQ_BENCH_N
// overrides the default 100,000 for a quick look).
func pipelineN() int {
	if v, err := strconv.Atoi(os.Getenv("AGENTQ_BENCH_N")); err == nil && v > 0 {
		return v
	}
	return 100_000
}

// childEnv selects a bare consumer when the test binary is re-executed.
const childEnv = "AGENTQ_BENCH_CHILD"

// runBenchChild runs a bare consumer if this process was started as one;
// it reports whether it did (TestMain then exits).
func runBenchChild() bool {
	kind := os.Getenv(childEnv)
	if kind == "" {
		return false
	}
	n, _ := strconv.Atoi(os.Getenv("AGENTQ_BENCH_CHILD_N"))
	dest := os.Getenv("AGENTQ_BENCH_CHILD_DEST")
	if err := bareConsumers[kind](dest, n); err != nil {
		fmt.Fprintln(os.Stderr, "bare consumer:", err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

// bareConsumers are the baselines: they take n messages and only
// acknowledge them (or let the broker auto-acknowledge), keeping nothing.
var bareConsumers = map[string]func(dest string, n int) error{
	"stomp-client-individual": func(dest string, n int) error { return bareSTOMP(dest, n, stomp.AckClientIndividual) },
	"stomp-auto":              func(dest string, n int) error { return bareSTOMP(dest, n, stomp.AckAuto) },
}

func bareSTOMP(dest string, n int, mode stomp.AckMode) error {
	conn, err := stomp.Dial("tcp", stompAddr, stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"),
		stomp.ConnOpt.ReadChannelCapacity(1000), stomp.ConnOpt.WriteChannelCapacity(1000))
	if err != nil {
		return err
	}
	defer conn.Disconnect()
	sub, err := conn.Subscribe(dest, mode, stomp.SubscribeOpt.Header("prefetch-count", "1000"))
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		m := <-sub.C
		if m.Err != nil {
			return m.Err
		}
		if mode != stomp.AckAuto {
			if err := conn.Ack(m); err != nil {
				return err
			}
		}
	}
	return nil
}

// publishSTOMP sends n persistent messages of size bytes and waits for the
// broker's receipt of the last one (a connection's frames are processed
// in order, so all are queued then).
func publishSTOMP(tb testing.TB, dest string, n, size int, hdr func(i int) []func(*frame.Frame) error) {
	tb.Helper()
	conn, err := stomp.Dial("tcp", stompAddr, stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"))
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Disconnect()
	body := make([]byte, size)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	for i := 0; i < n; i++ {
		opts := []func(*frame.Frame) error{stomp.SendOpt.Header("persistent", "true"), stomp.SendOpt.Header("type", "order.created")}
		if hdr != nil {
			opts = append(opts, hdr(i)...)
		}
		if i == n-1 {
			opts = append(opts, stomp.SendOpt.Receipt)
		}
		if err := conn.Send(dest, "application/octet-stream", body, opts...); err != nil {
			tb.Fatal(err)
		}
	}
}

// brokerPID is the local RabbitMQ's Erlang VM, to count the broker's CPU
// beside the agent's (both share the machine's cores); 0 if not found.
func brokerPID() int {
	out, err := exec.Command("pgrep", "-u", "rabbitmq", "-f", "beam.smp.*rabbit").Output()
	if err != nil {
		return 0
	}
	f := strings.Fields(string(out))
	if len(f) == 0 {
		return 0
	}
	pid, _ := strconv.Atoi(f[0])
	return pid
}

// procCPU is a process's user+sys time so far.
func procCPU(tb testing.TB, pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// benchBinary is the agent binary a benchmark runs: this build, or
// AGENTQ_BENCH_BINARY (another build, e.g. the previous release, for
// before/after figures from the same run).
func benchBinary(b *testing.B) string {
	if other := os.Getenv("AGENTQ_BENCH_BINARY"); other != "" {
		return other
	}
	return agentBinary(b)
}

// procStatusKB reads one kB field of /proc/PID/status (RssAnon, VmRSS).
func procStatusKB(pid int, field string) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, field+":") {
			n, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			return n
		}
	}
	return 0
}

// pipelineResult is one consumer's figures.
type pipelineResult struct {
	msgPerSec float64
	cpuPerMsg time.Duration
}

// runBareChild runs a bare consumer process over a pre-filled queue.
func runBareChild(b *testing.B, kind, dest string, n int) pipelineResult {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+kind, "AGENTQ_BENCH_CHILD_N="+strconv.Itoa(n), "AGENTQ_BENCH_CHILD_DEST="+dest)
	cmd.Stderr = os.Stderr
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		b.Fatalf("bare consumer %s: %v", kind, err)
	}
	wall := time.Since(t0)
	cpu := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return pipelineResult{msgPerSec: float64(n) / wall.Seconds(), cpuPerMsg: cpu / time.Duration(n)}
}

// agentRun is the real binary working through a pre-filled queue.
type agentRun struct {
	pipelineResult
	rssAnonMiB   float64
	journalBytes int64         // the journal file's size
	liveBytes    float64       // its pages less its free pages: the data it holds
	ownBytes     float64       // one message as delivered: body, header names and values
	commits      float64       // journal group commits during the run
	brokerCPU    time.Duration // RabbitMQ's CPU during the run; 0 if unknown
}

// runAgentPipeline starts the real binary on a pre-filled queue with the
// given source URL and extra flags, and waits until every message is done.
func runAgentPipeline(b *testing.B, source string, n int, extra ...string) agentRun {
	b.Helper()
	journal := filepath.Join(b.TempDir(), "agentq.db")
	args := append([]string{"run", "--journal", journal, "--source", source, "--admin", "127.0.0.1:0", "--log-level", "warn"}, extra...)
	cmd := exec.Command(benchBinary(b), args...)
	cmd.Stderr = os.Stderr
	if env := os.Getenv("AGENTQ_BENCH_AGENT_ENV"); env != "" {
		cmd.Env = append(os.Environ(), strings.Fields(env)...) // e.g. GOGC=200, for A/B runs
	}
	broker := brokerPID()
	var broker0 time.Duration
	if broker > 0 {
		broker0 = procCPU(b, broker)
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	var base, token string
	var rss int64
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if time.Now().After(deadline) {
			b.Fatalf("agent did not finish %d messages in 10 minutes", n)
		}
		rss = max(rss, procStatusKB(cmd.Process.Pid, "RssAnon"))
		if base == "" {
			if raw, err := os.ReadFile(journal + ".admin"); err == nil {
				base = "http://" + between(string(raw), `"addr":"`, `"`)
				token = between(string(raw), `"token":"`, `"`)
				if out := os.Getenv("AGENTQ_BENCH_CPUPROFILE"); out != "" {
					go saveProfile(base, string(raw), out)
				}
			}
		} else if done, outbox := pollSummary(base, token); done >= n && outbox == 0 {
			break
		}
		// /v1/summary reads counters only: polling it costs the agent
		// little, unlike a /metrics scrape (a Prometheus server scrapes
		// every 15 s or so, not 20 times a second).
		time.Sleep(50 * time.Millisecond)
	}
	wall := time.Since(t0)
	cpu := procCPU(b, cmd.Process.Pid)
	var brokerCPU time.Duration
	if broker > 0 {
		brokerCPU = procCPU(b, broker) - broker0
	}
	fi, _ := os.Stat(journal)
	return agentRun{
		brokerCPU:      brokerCPU,
		pipelineResult: pipelineResult{msgPerSec: float64(n) / wall.Seconds(), cpuPerMsg: cpu / time.Duration(n)},
		rssAnonMiB:     float64(rss) / 1024,
		journalBytes:   fi.Size(),
		liveBytes:      metricValue(b, base, "agentq_journal_size_bytes") - metricValue(b, base, "agentq_journal_free_bytes"),
		ownBytes:       entryOwnBytes(base, token, 1),
		commits:        metricValue(b, base, "agentq_journal_commit_duration_seconds_count"),
	}
}

// saveProfile writes a 5-second CPU profile of the agent to out
// (AGENTQ_BENCH_CPUPROFILE), to see where its time goes under load, and
// its allocation profile to out.allocs.
func saveProfile(base, addrFile, out string) {
	req, _ := http.NewRequest("GET", base+"/debug/pprof/profile?seconds=5", nil)
	req.Header.Set("Authorization", "Bearer "+between(addrFile, `"token":"`, `"`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	os.WriteFile(out, raw, 0o644)
	// And what was allocated so far (go tool pprof -sample_index=alloc_space).
	req, _ = http.NewRequest("GET", base+"/debug/pprof/allocs", nil)
	req.Header.Set("Authorization", "Bearer "+between(addrFile, `"token":"`, `"`))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		os.WriteFile(out+".allocs", raw, 0o644)
	}
}

// pollSummary returns the done entries and the outbox messages waiting,
// from the agent's /v1/summary; -1s when it cannot.
func pollSummary(base, token string) (done, outbox int) {
	req, _ := http.NewRequest("GET", base+"/v1/summary", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return -1, -1
	}
	defer resp.Body.Close()
	var sum struct {
		States map[string]int `json:"states"`
		Outbox struct {
			Pending int `json:"pending"`
		} `json:"outbox"`
	}
	if json.NewDecoder(resp.Body).Decode(&sum) != nil {
		return -1, -1
	}
	return sum.States["done"], sum.Outbox.Pending
}

// entryOwnBytes is the size of entry seq as it was delivered: its body
// and its header names and values, what a journal's bytes per message are
// compared with. 0 if the agent does not answer.
func entryOwnBytes(base, token string, seq uint64) float64 {
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/v1/entries/%d", base, seq), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var e struct {
		BodySize int `json:"body_size"`
		Headers  []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"headers"`
	}
	if json.NewDecoder(resp.Body).Decode(&e) != nil {
		return 0
	}
	n := e.BodySize
	for _, h := range e.Headers {
		n += len(h.Name) + len(h.Value)
	}
	return float64(n)
}

func benchQueue(tb testing.TB, kind string) string {
	q := fmt.Sprintf("/queue/agentq-bench-%s-%d", kind, rand.Int63())
	brokertest.DeleteAtEnd(tb, q)
	return q
}

// BenchmarkPipelineSTOMP: the real binary with default settings (log
// backend, --log-level warn) over 100,000 persistent 512-byte messages,
// prefetch 1000, against a bare go-stomp consumer that ACKs each message
// and one with auto-ack, in the same run, pipelineRounds times.
func BenchmarkPipelineSTOMP(b *testing.B) {
	requireBroker(b)
	n := pipelineN()
	const size = 512
	var rounds []pipelineRound
	for it := 0; it < b.N; it++ {
		for r := 0; r < pipelineRounds(); r++ {
			var ind, auto pipelineResult
			if os.Getenv("AGENTQ_BENCH_AGENT_ONLY") == "" { // for A/B runs of two builds
				q := benchQueue(b, "ind")
				publishSTOMP(b, q, n, size, nil)
				ind = runBareChild(b, "stomp-client-individual", q, n)

				q = benchQueue(b, "auto")
				publishSTOMP(b, q, n, size, nil)
				auto = runBareChild(b, "stomp-auto", q, n)
			}
			q := benchQueue(b, "agentq")
			publishSTOMP(b, q, n, size, nil)
			aq := runAgentPipeline(b, "stomp://guest:guest@"+stompAddr+q+"?prefetch=1000", n)
			rounds = append(rounds, pipelineRound{aq, map[string]pipelineResult{"individual": ind, "auto": auto}})
		}
	}
	reportPipeline(b, rounds, size, n)
}

// pipelineRounds is how many times a whole-pipeline benchmark runs agentq
// and its bare consumers (AGENTQ_BENCH_ROUNDS, default 3). Runs here
// spread by ±15 %, mostly with the broker's own pace, so one round's
// ratio can land on either side of a target; the median of three does
// not move with one odd run.
func pipelineRounds() int {
	if v, err := strconv.Atoi(os.Getenv("AGENTQ_BENCH_ROUNDS")); err == nil && v > 0 {
		return v
	}
	return 3
}

// pipelineRound is one run of agentq and of each bare consumer.
type pipelineRound struct {
	aq    agentRun
	bases map[string]pipelineResult
}

// reportPipeline reports msg/s, CPU µs per message and ratios against each
// baseline: the median over rounds of each figure, ratios taken within a
// round ("-min"/"-max" give the ratios' spread).
func reportPipeline(b *testing.B, rounds []pipelineRound, size, n int) {
	per := map[string][]float64{}
	var order []string
	add := func(name string, v float64) {
		if _, ok := per[name]; !ok {
			order = append(order, name)
		}
		per[name] = append(per[name], v)
	}
	for _, r := range rounds {
		aq := r.aq
		add("agentq-msg/s", aq.msgPerSec)
		add("agentq-cpu-us/msg", float64(aq.cpuPerMsg.Nanoseconds())/1000)
		add("agentq-rssanon-MiB", aq.rssAnonMiB)
		if aq.commits > 0 {
			add("msgs/commit", float64(n)/aq.commits)
		}
		add("journal-bytes/msg", float64(aq.journalBytes)/float64(n))
		add("journal-bytes-ratio", float64(aq.journalBytes)/float64(n)/float64(size))
		if aq.liveBytes > 0 && aq.ownBytes > 0 {
			// The file grows in steps of up to bbolt's 16 MiB and keeps
			// the pages churn freed: what it holds is pages less free ones.
			add("journal-live-bytes/msg", aq.liveBytes/float64(n))
			add("msg-own-bytes", aq.ownBytes)
			add("journal-live-vs-own", aq.liveBytes/float64(n)/aq.ownBytes)
		}
		names := make([]string, 0, len(r.bases))
		for k := range r.bases {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			base := r.bases[k]
			if base.msgPerSec == 0 {
				continue // not run (AGENTQ_BENCH_AGENT_ONLY)
			}
			add(k+"-msg/s", base.msgPerSec)
			add(k+"-cpu-us/msg", float64(base.cpuPerMsg.Nanoseconds())/1000)
			add("ratio-msg/s-vs-"+k, aq.msgPerSec/base.msgPerSec)
			if base.cpuPerMsg > 0 {
				add("ratio-cpu-vs-"+k, float64(aq.cpuPerMsg)/float64(base.cpuPerMsg))
			}
		}
	}
	for _, name := range order {
		vs := slices.Sorted(slices.Values(per[name]))
		b.ReportMetric(vs[len(vs)/2], name)
		if strings.HasPrefix(name, "ratio-") && len(vs) > 1 {
			b.ReportMetric(vs[0], name+"-min")
			b.ReportMetric(vs[len(vs)-1], name+"-max")
		}
	}
	b.ReportMetric(float64(len(rounds)), "rounds")
}

// BenchmarkEndToEndBinary: publish → journal → fsync → ACK → dispatch → an
// HTTP backend on loopback, through the real binary at 1,000 msg/s for 5 s.
// Latency is from the publisher's send to the backend's request.
//
// persistent: the publisher marks its messages persistent, so RabbitMQ
// writes and fsyncs them on the same disk as the journal, and each side's
// fsyncs wait for the other's (ext4 flushes the whole journal
// transaction). transient: the broker keeps them in memory, as if it ran
// on another machine, which is where a control plane's broker runs: the
// journal has the disk to itself.
func BenchmarkEndToEndBinary(b *testing.B) {
	for _, persistent := range []bool{true, false} {
		name := map[bool]string{true: "persistent", false: "transient"}[persistent]
		b.Run(name, func(b *testing.B) { benchEndToEnd(b, persistent) })
	}
}

func benchEndToEnd(b *testing.B, persistent bool) {
	requireBroker(b)
	const rate, seconds = 1000, 5
	var mu sync.Mutex
	var lat []time.Duration
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		var m struct {
			Sent int64 `json:"sent"`
		}
		if json.NewDecoder(r.Body).Decode(&m) == nil && m.Sent > 0 {
			mu.Lock()
			lat = append(lat, now.Sub(time.Unix(0, m.Sent)))
			mu.Unlock()
		}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	var commitSum, commits, waitSum, waits float64
	for it := 0; it < b.N; it++ {
		q := benchQueue(b, "e2e")
		journal := filepath.Join(b.TempDir(), "agentq.db")
		cmd := exec.Command(benchBinary(b), "run", "--journal", journal, "--source", "stomp://guest:guest@"+stompAddr+q,
			"--admin", "127.0.0.1:0", "--log-level", "warn", "--http", "http://"+ln.Addr().String()+"/")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		brokertest.WaitFor(b, "the agent's subscription", 30*time.Second, func() bool {
			return strings.Contains(brokertest.Ctl(b, "list_consumers", "-q", "queue_name"), strings.TrimPrefix(q, "/queue/"))
		})
		publishAtRate(b, q, rate, rate*seconds, persistent)
		brokertest.WaitFor(b, "every message at the backend", time.Minute, func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(lat) >= (it+1)*rate*seconds
		})
		if raw, err := os.ReadFile(journal + ".admin"); err == nil {
			base := "http://" + between(string(raw), `"addr":"`, `"`)
			commitSum += metricValue(b, base, "agentq_journal_commit_duration_seconds_sum")
			commits += metricValue(b, base, "agentq_journal_commit_duration_seconds_count")
			waitSum += metricValue(b, base, "agentq_dispatch_wait_seconds_sum")
			waits += metricValue(b, base, "agentq_dispatch_wait_seconds_count")
		}
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	if commits > 0 {
		b.ReportMetric(commitSum/commits*1000, "commit-ms")
		b.ReportMetric(commits/float64(rate*seconds*b.N), "commits/msg")
	}
	if waits > 0 { // the agent's own view: receipt to the backend call's start
		b.ReportMetric(waitSum/waits*1000, "agent-wait-mean-ms")
	}
	// The broker's share, in the same run: the same publisher and rate,
	// to a bare consumer that ACKs each message on receipt.
	bare := bareLatency(b, rate, rate*seconds, persistent)
	b.ReportMetric(percentileMS(bare, 0.50), "bare-p50-ms")
	b.ReportMetric(percentileMS(bare, 0.99), "bare-p99-ms")
	mu.Lock()
	defer mu.Unlock()
	b.ReportMetric(percentileMS(lat, 0.50), "p50-ms")
	b.ReportMetric(percentileMS(lat, 0.99), "p99-ms")
}

// percentileMS sorts lat and returns its p-quantile in milliseconds.
func percentileMS(lat []time.Duration, p float64) float64 {
	if len(lat) == 0 {
		return 0
	}
	slices.Sort(lat)
	return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
}

// publishAtRate sends n JSON bodies of about 512 bytes to dest, rate a
// second, each carrying its send time ("sent", Unix nanoseconds).
func publishAtRate(tb testing.TB, dest string, rate, n int, persistent bool) {
	tb.Helper()
	conn, err := stomp.Dial("tcp", stompAddr, stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"))
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Disconnect()
	pad := strings.Repeat("x", 470)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := 0; i < n; i++ {
		<-tick.C
		body := fmt.Sprintf(`{"sent":%d,"pad":"%s"}`, time.Now().UnixNano(), pad)
		opts := []func(*frame.Frame) error(nil)
		if persistent { // RabbitMQ's STOMP: messages are transient unless this header says
			opts = append(opts, stomp.SendOpt.Header("persistent", "true"))
		}
		if err := conn.Send(dest, "application/json", []byte(body), opts...); err != nil {
			tb.Fatal(err)
		}
	}
}

// bareLatency publishes n messages at rate to a bare go-stomp consumer
// (client-individual, an ACK on receipt, nothing durable) and returns
// each message's time from publish to receipt: what the broker and the
// loopback take before any consumer can act.
func bareLatency(b *testing.B, rate, n int, persistent bool) []time.Duration {
	q := benchQueue(b, "e2e-bare")
	conn, err := stomp.Dial("tcp", stompAddr, stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Disconnect()
	sub, err := conn.Subscribe(q, stomp.AckClientIndividual, stomp.SubscribeOpt.Header("prefetch-count", "1000"))
	if err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, n)
	got := make(chan error, 1)
	go func() {
		for len(lat) < n {
			m, ok := <-sub.C
			if !ok {
				got <- fmt.Errorf("subscription closed after %d messages", len(lat))
				return
			}
			now := time.Now()
			if m.Err != nil {
				got <- m.Err
				return
			}
			var body struct {
				Sent int64 `json:"sent"`
			}
			if err := json.Unmarshal(m.Body, &body); err != nil {
				got <- err
				return
			}
			lat = append(lat, now.Sub(time.Unix(0, body.Sent)))
			if err := conn.Ack(m); err != nil {
				got <- err
				return
			}
		}
		got <- nil
	}()
	publishAtRate(b, q, rate, n, persistent)
	select {
	case err := <-got:
		if err != nil {
			b.Fatal(err)
		}
	case <-time.After(time.Minute):
		b.Fatalf("the bare consumer did not receive %d messages in a minute", n)
	}
	return lat
}

// BenchmarkPipelineResults: tasks in, results out, through the real
// binary: 20,000 persistent 512-byte tasks to an HTTP backend on loopback
// that answers 512 bytes, with results (every answer in the outbox,
// published in batches, each message confirmed by the broker) and, in the same run,
// without them. Reports both and their ratio, for two set-ups:
//   - stomp: tasks from a STOMP queue, results to a STOMP queue, a
//     receipt per SEND;
//   - amqp: Globus-shaped, tasks from an AMQP queue, results to a topic
//     exchange "results" with routing key EP.results and a queue bound to
//     *.results, publisher confirms and mandatory. Also reports the
//     broker's CPU per message for a bare publisher of the tasks: what a
//     persistent result costs the broker whoever publishes it.
func BenchmarkPipelineResults(b *testing.B) {
	requireBroker(b)
	n := pipelineN() / 5
	answer := make([]byte, 512)
	for i := range answer {
		answer[i] = byte('A' + i%26)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(answer) })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	backend := "http://" + ln.Addr().String() + "/"
	report := func(b *testing.B, with, without agentRun) {
		b.ReportMetric(without.msgPerSec, "no-results-msg/s")
		b.ReportMetric(float64(without.cpuPerMsg.Nanoseconds())/1000, "no-results-cpu-us/msg")
		b.ReportMetric(with.msgPerSec, "results-msg/s")
		b.ReportMetric(float64(with.cpuPerMsg.Nanoseconds())/1000, "results-cpu-us/msg")
		b.ReportMetric(with.msgPerSec/without.msgPerSec, "ratio-msg/s")
		// The agent's own price of its results, CPU without over CPU with.
		b.ReportMetric(float64(without.cpuPerMsg)/float64(with.cpuPerMsg), "agent-cpu-ratio")
		if with.brokerCPU > 0 && without.brokerCPU > 0 {
			b.ReportMetric(float64(without.brokerCPU.Nanoseconds())/1000/float64(n), "no-results-broker-cpu-us/msg")
			b.ReportMetric(float64(with.brokerCPU.Nanoseconds())/1000/float64(n), "results-broker-cpu-us/msg")
			// With agent and broker sharing the cores, throughput follows
			// their CPU per task: this is the ratio that sharing allows.
			b.ReportMetric(float64(without.cpuPerMsg*time.Duration(n)+without.brokerCPU)/float64(with.cpuPerMsg*time.Duration(n)+with.brokerCPU), "shared-cpu-ratio")
		}
	}
	b.Run("stomp", func(b *testing.B) {
		var with, without agentRun
		for it := 0; it < b.N; it++ {
			q := benchQueue(b, "tasks")
			publishSTOMP(b, q, n, 512, nil)
			without = runAgentPipeline(b, "stomp://guest:guest@"+stompAddr+q+"?prefetch=1000", n, "--http", backend)

			q = benchQueue(b, "tasks-results")
			publishSTOMP(b, q, n, 512, nil)
			results := benchQueue(b, "results")
			with = runAgentPipeline(b, "stomp://guest:guest@"+stompAddr+q+"?prefetch=1000", n, "--http", backend,
				"--results", "stomp://guest:guest@"+stompAddr+results)
		}
		report(b, with, without)
	})
	b.Run("amqp", func(b *testing.B) {
		var with, without agentRun
		var publishCPU time.Duration
		for it := 0; it < b.N; it++ {
			q := amqpBenchQueue(b, "tasks")
			publishAMQPBench(b, q, n, 512)
			without = runAgentPipeline(b, amqpBenchURL+"?queue="+q+"&prefetch=1000", n, "--http", backend)

			ep := fmt.Sprintf("ep%d", rand.Int63())
			q = ep + ".tasks"
			brokertest.DeleteAtEnd(b, q)
			// The tasks' publisher is a bare one (confirms per 1,000): the
			// broker's CPU for it is what a result costs the broker at least.
			broker := brokerPID()
			var c0 time.Duration
			if broker > 0 {
				c0 = procCPU(b, broker)
			}
			publishAMQPBench(b, q, n, 512)
			if broker > 0 {
				publishCPU = procCPU(b, broker) - c0
			}
			results := amqpBenchQueue(b, "results")
			bindResultsQueue(b, "agentq-bench-results", results, "*.results")
			with = runAgentPipeline(b, amqpBenchURL+"?queue="+q+"&prefetch=1000", n, "--http", backend,
				"--results", amqpBenchURL+"?exchange=agentq-bench-results&routing_key="+ep+".results")
		}
		report(b, with, without)
		if publishCPU > 0 {
			b.ReportMetric(float64(publishCPU.Nanoseconds())/1000/float64(n), "bare-publish-broker-cpu-us/msg")
		}
	})
}
