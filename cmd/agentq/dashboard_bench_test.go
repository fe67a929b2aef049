package main

import (
	"io"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/agentq/agentq/admin"
	"github.com/agentq/agentq/queue"
)

// BenchmarkDashboard1M: the dashboard's pages over a journal of 1M
// entries (1,000 keys, 100k done): the overview and the first page of
// several filters, each rendered 20 times; reports the median and worst
// time per page. Target: ≤ 200 ms.
func BenchmarkDashboard1M(b *testing.B) {
	path := bench1M(b)
	j, err := queue.Open(path, queue.Options{Logger: discardLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	ln, err := admin.Listen("127.0.0.1:0", "")
	if err != nil {
		b.Fatal(err)
	}
	srv := &admin.Server{Store: admin.NewLocal(j, false)}
	srv.Start(ln)
	defer srv.Shutdown()
	base := "http://" + ln.Addr().String()
	pages := []struct{ name, path string }{
		{"overview", "/ui/"},
		{"entries", "/ui/entries"},
		{"pending", "/ui/entries?state=pending"},
		{"type", "/ui/entries?type=order.*"},
		{"key", "/ui/entries?key=k7"},
		{"stuck", "/ui/stuck"},
		{"routes", "/ui/routes"},
	}
	worst := map[string]time.Duration{}
	median := map[string]time.Duration{}
	for it := 0; it < b.N; it++ {
		for _, p := range pages {
			var ds []time.Duration
			for i := 0; i < 20; i++ {
				t0 := time.Now()
				resp, err := http.Get(base + p.path)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("%s: %s", p.path, resp.Status)
				}
				ds = append(ds, time.Since(t0))
			}
			sort.Slice(ds, func(i, k int) bool { return ds[i] < ds[k] })
			median[p.name], worst[p.name] = ds[len(ds)/2], max(worst[p.name], ds[len(ds)-1])
		}
	}
	for _, p := range pages {
		b.ReportMetric(float64(median[p.name].Microseconds())/1000, p.name+"-ms")
		b.ReportMetric(float64(worst[p.name].Microseconds())/1000, p.name+"-worst-ms")
	}
}
