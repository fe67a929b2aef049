package worker

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3"

	"github.com/agentq/agentq/ingest"
	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/queue"
)

// BenchmarkDispatch drains a journal of 100k pending entries over 1,000
// keys with the log backend and 8 workers, fsync on.
func BenchmarkDispatch(b *testing.B) {
	const n = 100_000
	var total time.Duration
	for it := 0; it < b.N; it++ {
		b.StopTimer()
		j := mustOpenJournal(b, "", queue.Options{})
		ctx := context.Background()
		for i := 0; i < n; i += 4096 {
			es := make([]*queue.Entry, 0, 4096)
			for k := i; k < min(i+4096, n); k++ {
				es = append(es, &queue.Entry{Type: "order.created", Key: fmt.Sprint("k", k%1000), Body: make([]byte, 512)})
			}
			if _, err := j.Append(ctx, es...); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		t0 := time.Now()
		stop := startPool(b, j, mustRouter(b, NewLog(slog.New(slog.DiscardHandler))), Options{Workers: 8})
		for j.Stats().ByState[queue.StateDone] < n {
			time.Sleep(time.Millisecond)
		}
		total += time.Since(t0)
		stop()
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "entries/s")
}

// BenchmarkEndToEndLatency offers 1,000 msg/s for 5 s to a real RabbitMQ
// and measures from the publisher's send to the backend call's start,
// through ingest (journal, fsync, ACK) and the pool.
func BenchmarkEndToEndLatency(b *testing.B) {
	brokertest.Require(b)
	const rate, seconds = 1000, 5
	const n = rate * seconds
	var p50, p99 time.Duration
	for it := 0; it < b.N; it++ {
		dest := fmt.Sprintf("/queue/agentq-bench-latency-%d", rand.Int63())
		brokertest.DeleteAtEnd(b, dest)
		j := mustOpenJournal(b, "", queue.Options{})
		var mu sync.Mutex
		lat := make([]time.Duration, 0, n)
		backend := &funcBackend{name: "latency", fn: func(_ context.Context, e *queue.Entry) error {
			now := time.Now()
			if v, ok := e.Header("x-sent-ns"); ok {
				ns, _ := strconv.ParseInt(v, 10, 64)
				mu.Lock()
				lat = append(lat, now.Sub(time.Unix(0, ns)))
				mu.Unlock()
			}
			return nil
		}}
		cfg, err := ingest.ParseURL("stomp://guest:guest@127.0.0.1:61613" + dest + "?prefetch=1000")
		if err != nil {
			b.Fatal(err)
		}
		if err := cfg.Resolve(); err != nil {
			b.Fatal(err)
		}
		quiet := slog.New(slog.DiscardHandler)
		src := ingest.NewSource(cfg, j, ingest.Options{Logger: quiet})
		ctx, cancel := context.WithCancel(context.Background())
		srcDone := make(chan struct{})
		go func() { defer close(srcDone); src.Run(ctx) }()
		stop := startPool(b, j, mustRouter(b, backend), Options{Workers: 8, Logger: quiet})
		for src.Status().State != ingest.StateConnected {
			time.Sleep(time.Millisecond)
		}

		pub, err := stomp.Dial("tcp", "127.0.0.1:61613", stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"))
		if err != nil {
			b.Fatal(err)
		}
		tick := time.NewTicker(time.Second / rate)
		for i := 0; i < n; i++ {
			<-tick.C
			sent := strconv.FormatInt(time.Now().UnixNano(), 10)
			if err := pub.Send(dest, "text/plain", []byte("x"), stomp.SendOpt.Header("persistent", "true"), stomp.SendOpt.Header("x-sent-ns", sent)); err != nil {
				b.Fatal(err)
			}
		}
		tick.Stop()
		pub.Disconnect()
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			got := len(lat)
			mu.Unlock()
			if got >= n || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
		<-srcDone
		stop()
		mu.Lock()
		if len(lat) < n {
			b.Fatalf("only %d of %d messages reached the backend", len(lat), n)
		}
		slices.Sort(lat)
		p50 += lat[len(lat)/2]
		p99 += lat[len(lat)*99/100]
		mu.Unlock()
	}
	b.ReportMetric(float64(p50.Microseconds())/1000/float64(b.N), "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000/float64(b.N), "p99-ms")
}
