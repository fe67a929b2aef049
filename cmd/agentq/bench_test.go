package main

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentq/agentq/admin"
	"github.com/agentq/agentq/internal/brokertest"
	"github.com/agentq/agentq/queue"
)

// bench1M returns a copy of a journal with 1M pending entries over 1,000
// keys, built once and cached in the system temp directory.
func bench1M(b *testing.B) string {
	b.Helper()
	cache := filepath.Join(os.TempDir(), fmt.Sprintf("agentq-bench-cmd-1M-v%d-p%d.db", queue.FormatVersion, queue.DefaultPageSize))
	if _, err := os.Stat(cache); err != nil {
		tmp := cache + ".building"
		os.Remove(tmp)
		j, err := queue.Open(tmp, queue.Options{Logger: discardLogger()})
		if err != nil {
			b.Fatal(err)
		}
		body := make([]byte, 512)
		for i := 0; i < 1_000_000; i += 4096 {
			es := make([]*queue.Entry, 0, 4096)
			for k := i; k < min(i+4096, 1_000_000); k++ {
				es = append(es, &queue.Entry{Source: "bench", Type: "order.created", Key: fmt.Sprint("k", k%1000), Body: body})
			}
			if _, err := j.Append(context.Background(), es...); err != nil {
				b.Fatal(err)
			}
		}
		j.Close()
		if err := os.Rename(tmp, cache); err != nil {
			b.Fatal(err)
		}
	}
	dst := filepath.Join(b.TempDir(), "agentq.db")
	in, _ := os.Open(cache)
	out, _ := os.Create(dst)
	io.Copy(out, in)
	out.Sync() // on disk first: the agent's first fsync must not flush the copy
	in.Close()
	out.Close()
	return dst
}

var ackedRe = regexp.MustCompile(`(?m)^agentq_acked_total\{[^}]*\} (\d+)`)

// BenchmarkRestart1M measures, with the real binary on a journal of 1M
// pending entries: the time from starting the process to the broker's
// first ACK of a waiting message, and the agent's resident memory with
// that backlog while it works on it.
func BenchmarkRestart1M(b *testing.B) {
	journal := bench1M(b)
	bin := benchBinary(b)
	dest := fmt.Sprintf("/queue/agentq-bench-restart-%d", rand.Int63())
	brokertest.DeleteAtEnd(b, dest)
	var firstAck time.Duration
	var rssKB int64
	for it := 0; it < b.N; it++ {
		if code := Main(context.Background(), []string{"agentq", "send", "stomp://guest:guest@127.0.0.1:61613" + dest}, strings.NewReader(""), io.Discard, io.Discard); code != 0 {
			b.Fatal("send failed: is the broker up? (make broker)")
		}
		os.Remove(admin.AddrFile(journal))
		t0 := time.Now()
		cmd := exec.Command(bin, "run", "--journal", journal, "--source", "stomp://guest:guest@127.0.0.1:61613"+dest,
			"--admin", "127.0.0.1:0", "--exec", "sleep 5", "--workers", "8", "--log-level", "error")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		var adminRaw string
		for time.Since(t0) < time.Minute {
			if raw, err := os.ReadFile(admin.AddrFile(journal)); err == nil {
				adminRaw = strings.TrimSpace(string(raw))
				if resp, err := http.Get("http://" + between(adminRaw, `"addr":"`, `"`) + "/metrics"); err == nil {
					m, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if s := ackedRe.FindSubmatch(m); s != nil && string(s[1]) != "0" {
						firstAck += time.Since(t0)
						break
					}
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
		time.Sleep(3 * time.Second) // working on the backlog
		rssKB += vmRSS(b, cmd.Process.Pid)
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	b.ReportMetric(float64(firstAck.Milliseconds())/float64(b.N), "ms-to-first-ack")
	b.ReportMetric(float64(rssKB)/1024/float64(b.N), "MiB-rss")
}

func between(s, a, z string) string {
	i := strings.Index(s, a)
	if i < 0 {
		return ""
	}
	s = s[i+len(a):]
	if k := strings.Index(s, z); k >= 0 {
		return s[:k]
	}
	return s
}

func vmRSS(b *testing.B, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}
