package queue

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Benchmarks do a fixed amount of work per iteration so that
// `-benchtime 1x` (make bench) gives meaningful rates. All write to real
// files with fsync on.

var body512 = func() []byte {
	b := make([]byte, 512)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}()

func benchEntry(i int) *Entry {
	return &Entry{Source: "bench", Destination: "/queue/bench", Type: "order.created", Key: fmt.Sprint("k", i%1000), Body: body512,
		Headers: []Header{{"content-type", "application/json"}}}
}

// runConcurrent runs total operations over workers goroutines.
func runConcurrent(workers, total int, op func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				op(i)
			}
		}()
	}
	wg.Wait()
}

// BenchmarkAppend256 is group commit: 256 goroutines each appending one
// entry at a time.
func BenchmarkAppend256(b *testing.B) {
	const perIter = 20000
	j := mustOpen(b, Options{})
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for n := 0; n < b.N; n++ {
		runConcurrent(256, perIter, func(i int) {
			if _, err := j.Append(ctx, benchEntry(i)); err != nil {
				b.Error(err)
			}
		})
	}
	el := time.Since(start)
	b.ReportMetric(float64(perIter*b.N)/el.Seconds(), "entries/s")
	st := j.Stats()
	b.ReportMetric(float64(st.Ops)/float64(st.Commits), "ops/commit")
}

// BenchmarkAppendNaive is the baseline: the same 256 goroutines, one bbolt
// transaction (one fsync) per entry.
func BenchmarkAppendNaive(b *testing.B) {
	const perIter = 2000
	db, err := bolt.Open(filepath.Join(b.TempDir(), "naive.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket(bucketEntries); return err })
	b.ResetTimer()
	start := time.Now()
	for n := 0; n < b.N; n++ {
		runConcurrent(256, perIter, func(i int) {
			err := db.Update(func(tx *bolt.Tx) error {
				bk := tx.Bucket(bucketEntries)
				seq, _ := bk.NextSequence()
				e := benchEntry(i)
				return bk.Put(u64(seq), encodeEntry(nil, e))
			})
			if err != nil {
				b.Error(err)
			}
		})
	}
	el := time.Since(start)
	b.ReportMetric(float64(perIter*b.N)/el.Seconds(), "entries/s")
}

// benchJournal returns a copy of a journal with n entries over 1,000 keys,
// of which the first done are done, built once and cached in the system
// temp directory.
func benchJournal(b *testing.B, n, done int) string {
	b.Helper()
	cache := filepath.Join(os.TempDir(), fmt.Sprintf("agentq-bench-%d-%d-v%d-p%d.db", n, done, FormatVersion, DefaultPageSize))
	if _, err := os.Stat(cache); err != nil {
		tmp := cache + ".building"
		os.Remove(tmp)
		j, err := Open(tmp, Options{Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		const batch = 4096
		for i := 0; i < n; i += batch {
			es := make([]*Entry, 0, batch)
			for k := i; k < min(i+batch, n); k++ {
				es = append(es, benchEntry(k))
			}
			if _, err := j.Append(ctx, es...); err != nil {
				b.Fatal(err)
			}
		}
		for finished := 0; finished < done; {
			es, err := j.Claim(ctx, min(batch, done-finished))
			if err != nil || len(es) == 0 {
				b.Fatalf("building: claim: %v (%d)", err, len(es))
			}
			outs := make([]Outcome, len(es))
			for i, e := range es {
				outs[i] = Outcome{Seq: e.Seq, Kind: Done}
			}
			if err := j.Settle(ctx, outs...); err != nil {
				b.Fatal(err)
			}
			finished += len(es)
		}
		if err := j.Close(); err != nil {
			b.Fatal(err)
		}
		if err := os.Rename(tmp, cache); err != nil {
			b.Fatal(err)
		}
	}
	dst := filepath.Join(b.TempDir(), "agentq.db")
	copyFile(b, cache, dst)
	return dst
}

func copyFile(b *testing.B, src, dst string) {
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	// On disk before the benchmark starts: otherwise the first fsync of
	// the journal flushes the whole copy and is timed as part of it.
	if err := out.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := out.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkClaim measures picking the next ready entry (Claim of one) in
// journals of 10k and 1M pending entries: the cost must not grow with
// the journal.
func BenchmarkClaim(b *testing.B) {
	for _, n := range []int{10_000, 1_000_000} {
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
			path := benchJournal(b, n, 0)
			j := mustOpenAt(b, path, Options{})
			ctx := context.Background()
			const perIter = 2000
			var pick time.Duration
			b.ResetTimer()
			for it := 0; it < b.N; it++ {
				for i := 0; i < perIter; i++ {
					t0 := time.Now()
					es, err := j.Claim(ctx, 1)
					pick += time.Since(t0)
					if err != nil || len(es) != 1 {
						b.Fatalf("claim: %v %d", err, len(es))
					}
					if err := j.Settle(ctx, Outcome{Seq: es[0].Seq, Kind: Done}); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(pick.Nanoseconds())/float64(perIter*b.N), "ns/pick") // a claim is in memory: no commit
			// The pick's own work, without the fsync: a read-only look at
			// the ready index, which is what does not grow.
			t0 := time.Now()
			const looks = 10000
			for i := 0; i < looks; i++ {
				j.NextReadyAt()
			}
			b.ReportMetric(float64(time.Since(t0).Nanoseconds())/looks, "ns/lookup")
		})
	}
}

// BenchmarkOpen1M measures Open (and Close) of a journal with 1M entries,
// 100k of them pending.
func BenchmarkOpen1M(b *testing.B) {
	path := benchJournal(b, 1_000_000, 900_000)
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		j, err := Open(path, Options{Logger: quietLogger()})
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
		if got := j.Stats().ByState[StatePending]; got != 100_000 {
			b.Fatalf("pending = %d, want 100000", got)
		}
		j.Close()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/open")
}

// BenchmarkJournalThroughput is the journal alone, fully through: 256
// producers each appending one entry at a time while 8 workers claim (up
// to 64 at once) and settle each entry done. It reports entries/s from
// the first append to the last settle, and the journal's size per
// 512-byte message afterwards ("bytes/msg": the file's high-water mark;
// "live-bytes/msg": less bbolt's free pages), beside the message's own
// bytes ("msg-bytes": body, headers, type, key, source, destination).
func BenchmarkJournalThroughput(b *testing.B) {
	const perIter = 50_000
	path := filepath.Join(b.TempDir(), "agentq.db")
	j := mustOpenAt(b, path, Options{})
	ctx := context.Background()
	var el time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		var settled atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				outs := make([]Outcome, 0, 64)
				for {
					es, err := j.Claim(ctx, 64)
					if err != nil {
						b.Error(err)
						return
					}
					if len(es) == 0 {
						select {
						case <-stop:
							return
						case <-j.Ready():
						case <-time.After(time.Millisecond):
						}
						continue
					}
					outs = outs[:0]
					for _, e := range es {
						outs = append(outs, Outcome{Seq: e.Seq, Kind: Done})
					}
					if err := j.Settle(ctx, outs...); err != nil {
						b.Error(err)
						return
					}
					if settled.Add(int64(len(es))) == perIter {
						close(stop)
					}
				}
			}()
		}
		runConcurrent(256, perIter, func(i int) {
			if _, err := j.Append(ctx, benchEntry(i)); err != nil {
				b.Error(err)
			}
		})
		wg.Wait()
		el += time.Since(start)
	}
	b.StopTimer()
	b.ReportMetric(float64(perIter*b.N)/el.Seconds(), "entries/s")
	var size, free int64
	_ = j.db.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil })
	free = int64(j.db.Stats().FreeAlloc)
	e := benchEntry(0)
	own := len(e.Body) + len(e.Type) + len(e.Key) + len(e.Source) + len(e.Destination)
	for _, h := range e.Headers {
		own += len(h.Name) + len(h.Value)
	}
	msgs := float64(perIter * b.N)
	b.ReportMetric(float64(size)/msgs, "bytes/msg")
	b.ReportMetric(float64(size-free)/msgs, "live-bytes/msg")
	b.ReportMetric(float64(own), "msg-bytes")
	st := j.Stats()
	b.ReportMetric(float64(st.Ops)/float64(st.Commits), "ops/commit")
	b.ReportMetric(float64(st.CommitTime.Microseconds())/float64(st.Commits), "µs/commit")
	ts := j.db.Stats().TxStats
	b.ReportMetric(float64(ts.GetWrite())/float64(st.Commits), "pages/commit")
}

// BenchmarkLatency1000: one message a millisecond through append, then a
// worker's claim and settle, as an agent at a moderate rate: the append's
// latency (what the broker waits for before its ACK) is the time of the
// commit it waits behind and of its own. Reports append and
// append-to-claim percentiles, µs and bbolt pages per commit, commits per
// message, by page size.
func BenchmarkLatency1000(b *testing.B) {
	for _, ps := range []int{4096, DefaultPageSize} {
		b.Run(fmt.Sprintf("page%dk", ps>>10), func(b *testing.B) {
			j := mustOpenAt(b, filepath.Join(b.TempDir(), "agentq.db"), Options{PageSize: ps})
			ctx := context.Background()
			for i := 0; i < 20; i++ { // a history of done entries, as a running agent has
				es := make([]*Entry, 0, 1000)
				for k := 0; k < 1000; k++ {
					es = append(es, benchEntry(k))
				}
				if _, err := j.Append(ctx, es...); err != nil {
					b.Fatal(err)
				}
				drain(b, j)
			}
			const per = 2000
			var appendLat, claimLat []time.Duration // the appender's; the dispatcher's
			stop := make(chan struct{})
			var wg sync.WaitGroup
			outs := make(chan []Outcome, 100)
			wg.Add(2)
			go func() { // the settler: as worker.Pool, apart from claims
				defer wg.Done()
				for o := range outs {
					if err := j.Settle(ctx, o...); err != nil {
						b.Error(err)
					}
				}
			}()
			go func() { // the dispatcher
				defer wg.Done()
				defer close(outs)
				for {
					es, err := j.Claim(ctx, 100)
					if err != nil {
						b.Error(err)
						return
					}
					now := time.Now()
					o := make([]Outcome, len(es))
					for i, e := range es {
						// ReceivedAt is when the appender called Append.
						claimLat = append(claimLat, now.Sub(e.ReceivedAt))
						o[i] = Outcome{Seq: e.Seq, Kind: Done}
					}
					if len(es) > 0 {
						outs <- o
						continue
					}
					select {
					case <-j.Ready():
					case <-stop:
						return
					}
				}
			}()
			st0, ts0 := j.Stats(), j.db.Stats().TxStats
			b.ResetTimer()
			for n := 0; n < b.N; n++ {
				tick := time.NewTicker(time.Millisecond)
				for i := 0; i < per; i++ {
					<-tick.C
					e := benchEntry(i)
					e.Key = ""
					e.DedupID = []byte(fmt.Sprint("id-", n, "-", i))
					t0 := time.Now()
					e.ReceivedAt = t0
					res, err := j.Append(ctx, e)
					if err != nil {
						b.Fatal(err)
					}
					appendLat = append(appendLat, time.Since(t0))
					if err := j.ConfirmDelivered(ctx, []uint64{res[0].Seq}); err != nil {
						b.Fatal(err)
					}
				}
				tick.Stop()
			}
			b.StopTimer()
			close(stop)
			wg.Wait()
			st, ts := j.Stats(), j.db.Stats().TxStats
			commits := float64(st.Commits - st0.Commits)
			b.ReportMetric(float64((st.CommitTime-st0.CommitTime).Microseconds())/commits, "µs/commit")
			b.ReportMetric(float64(ts.GetWrite()-ts0.GetWrite())/commits, "pages/commit")
			b.ReportMetric(commits/float64(per*b.N), "commits/msg")
			b.ReportMetric(float64((ts.GetSpillTime()-ts0.GetSpillTime()).Microseconds())/commits, "spill-µs/commit")
			b.ReportMetric(float64((ts.GetWriteTime()-ts0.GetWriteTime()).Microseconds())/commits, "write-µs/commit")
			reportPercentiles(b, "append", appendLat)
			reportPercentiles(b, "to-claim", claimLat)
		})
	}
}

// reportPercentiles reports the median and 99th percentile of lat in ms.
func reportPercentiles(b *testing.B, name string, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, name+"-p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, name+"-p99-ms")
}

// drain claims and settles as done everything ready.
func drain(tb testing.TB, j *Journal) {
	tb.Helper()
	ctx := context.Background()
	for {
		es, err := j.Claim(ctx, 1000)
		if err != nil {
			tb.Fatal(err)
		}
		if len(es) == 0 {
			return
		}
		outs := make([]Outcome, len(es))
		for i, e := range es {
			outs[i] = Outcome{Seq: e.Seq, Kind: Done}
		}
		if err := j.Settle(ctx, outs...); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkCycleCPU is the journal's CPU per entry with nothing running
// beside it: one goroutine appends 256 entries in one call, confirms
// their deliveries (each has a dedup id, as ingest gives them), claims
// them and settles them done, over and over. With no concurrency its figure
// (process user+sys time per entry, GC included) moves only with the
// journal's own work, so A/B runs of two builds can see a few per cent
// that the concurrent throughput benchmark's spread hides.
func BenchmarkCycleCPU(b *testing.B) {
	const batch, rounds = 256, 40
	j := mustOpenAt(b, filepath.Join(b.TempDir(), "agentq.db"), Options{})
	ctx := context.Background()
	es := make([]*Entry, batch)
	outs := make([]Outcome, 0, batch)
	seqs := make([]uint64, 0, batch)
	cpu0 := processCPU()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for r := 0; r < rounds; r++ {
			for i := range es {
				es[i] = benchEntry(r*batch + i)
				// As ingest does: a content hash for a dedup id, and
				// the deliveries confirmed once their ACK is out.
				id := sha256.Sum256(es[i].Body)
				es[i].DedupID = append([]byte("h:"), id[:]...)
			}
			res, err := j.Append(ctx, es...)
			if err != nil {
				b.Fatal(err)
			}
			seqs = seqs[:0]
			for _, r := range res {
				seqs = append(seqs, r.Seq)
			}
			if err := j.ConfirmDelivered(ctx, seqs); err != nil {
				b.Fatal(err)
			}
			got, err := j.Claim(ctx, batch)
			if err != nil {
				b.Fatal(err)
			}
			outs = outs[:0]
			for _, e := range got {
				outs = append(outs, Outcome{Seq: e.Seq, Kind: Done})
			}
			if err := j.Settle(ctx, outs...); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N*batch*rounds), "cpu-µs/entry")
}

// processCPU is the user+system time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDiskSync is the floor a commit stands on: bbolt writes a
// commit's pages and fdatasyncs, then writes its meta page and
// fdatasyncs again. This does the same with one 16 KiB page each time (a
// commit at 1,000 msg/s writes about ten), a message a millisecond, in
// the directory a journal would use, and reports the percentiles of the
// pair.
func BenchmarkDiskSync(b *testing.B) {
	f, err := os.OpenFile(filepath.Join(b.TempDir(), "sync"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	page := make([]byte, DefaultPageSize)
	if _, err := f.WriteAt(make([]byte, 64<<20), 0); err != nil { // no size change while timed
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	const perIter = 1000
	var lat []time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i := 0; i < perIter; i++ {
			start := time.Now()
			for _, off := range []int64{int64(1+i%1000) * DefaultPageSize, 0} {
				if _, err := f.WriteAt(page, off); err != nil {
					b.Fatal(err)
				}
				if err := syscall.Fdatasync(int(f.Fd())); err != nil {
					b.Fatal(err)
				}
			}
			lat = append(lat, time.Since(start))
			time.Sleep(time.Millisecond)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	ms := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(ms(0.5), "two-syncs-p50-ms")
	b.ReportMetric(ms(0.99), "two-syncs-p99-ms")
}

// BenchmarkCommitAfterDrain: what a backlog that drained and expired
// leaves behind. 1,000,000 entries (AGENTQ_BENCH_BACKLOG overrides) are
// appended, drained and expired; then one-append commits are timed on
// that file, and again after CompactIfSparse (what `agentq run` does at
// start). bbolt writes the list of free pages with every commit, so until
// the pages are reused or the file compacted every commit pays for the
// whole list: 41,862 pages, 335 KB, here.
func BenchmarkCommitAfterDrain(b *testing.B) {
	const probes = 1000
	backlog := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("AGENTQ_BENCH_BACKLOG")); err == nil && v > 0 {
		backlog = v
	}
	for n := 0; n < b.N; n++ {
		path := filepath.Join(b.TempDir(), "agentq.db")
		sparseJournal(b, path, backlog, func(i int) *Entry {
			e := benchEntry(i % 1000)
			e.Key = ""
			return e
		})
		ctx := context.Background()
		commitTime := func(j *Journal) float64 {
			st0 := j.Stats()
			for i := 0; i < probes; i++ {
				e := benchEntry(i)
				e.Key = ""
				if _, err := j.Append(ctx, e); err != nil {
					b.Fatal(err)
				}
			}
			st := j.Stats()
			return float64((st.CommitTime - st0.CommitTime).Microseconds()) / float64(st.Commits-st0.Commits)
		}
		syscall.Sync() // what the backlog wrote is on disk before either is timed
		j := mustOpenAt(b, path, Options{})
		b.ReportMetric(float64(j.db.Stats().FreePageN), "free-pages")
		b.ReportMetric(commitTime(j), "sparse-µs/commit")
		j.Close()
		before, after, ok, err := CompactIfSparse(path, SparseMinFree, SparseMaxLive, quietLogger())
		if err != nil || !ok {
			b.Fatalf("CompactIfSparse = %v, %v", ok, err)
		}
		b.ReportMetric(float64(before)/(1<<20), "MiB-before")
		b.ReportMetric(float64(after)/(1<<20), "MiB-after")
		syscall.Sync()
		j = mustOpenAt(b, path, Options{})
		b.ReportMetric(commitTime(j), "compacted-µs/commit")
		j.Close()
	}
}

// BenchmarkBboltFloor bounds any journal that keeps a bbolt record per
// message, as this one does: one goroutine, nothing concurrent, commits
// that each append a batch of message and status records (encoded as the
// journal encodes them) and rewrite the status records of the batch
// before (its settles), fsync on, same page size and fill. No index, no
// claim, no counters: what is left is bbolt's own work per record and
// commit, at 74, at BenchmarkJournalThroughput's entries per commit (133
// appended, and as many settled, in 2026-11-26's runs) and at 256.
func BenchmarkBboltFloor(b *testing.B) {
	for _, batch := range []int{74, 133, 256} {
		b.Run(fmt.Sprintf("batch%d", batch), func(b *testing.B) { benchBboltFloor(b, batch) })
	}
}

func benchBboltFloor(b *testing.B, batch int) {
	const perIter = 50_000
	db := floorDB(b, bucketMsgs, bucketStatus)
	e := benchEntry(0)
	e.ReceivedAt, e.BudgetStart = time.Now(), time.Now()
	msg := encodeMessage(nil, e, 0)
	e.State = StatePending
	pending := encodeStatus(nil, e)
	e.State, e.Attempts = StateDone, 1
	done := encodeStatus(nil, e)
	var seq uint64
	cpu0 := processCPU()
	start := time.Now()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i := 0; i < perIter; i += batch {
			if err := db.Update(func(tx *bolt.Tx) error {
				msgs, status := tx.Bucket(bucketMsgs), tx.Bucket(bucketStatus)
				msgs.FillPercent, status.FillPercent = 1.0, 1.0
				for k := 0; k < batch; k++ {
					if seq > uint64(batch) { // the batch before, settled
						if err := status.Put(u64(seq-uint64(batch)), done); err != nil {
							return err
						}
					}
					seq++
					if err := msgs.Put(u64(seq), msg); err != nil {
						return err
					}
					if err := status.Put(u64(seq), pending); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	el := time.Since(start)
	b.ReportMetric(float64(seq)/el.Seconds(), "entries/s")
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(seq), "cpu-µs/entry")
}

// BenchmarkBatchFloor bounds the journal the last two targets of issue 9
// would need, against BenchmarkBboltFloor's record per message: each
// commit puts one record holding its batch's messages (encoded as the
// journal encodes them, each behind its length) and one holding the
// outcomes of the batch before (a status record each, as a settle writes
// them), under the batch's first sequence. Nothing else: no index, no
// claim, no counters, which such a journal would keep in memory. At 74,
// 133 and 256 entries a commit it reports entries/s and CPU per entry; at one
// entry a commit, a message a millisecond (what a message waits for at
// 1,000 msg/s), µs and pages per commit, beside the disk's floor
// (BenchmarkDiskSync) and the journal's own (BenchmarkLatency1000).
func BenchmarkBatchFloor(b *testing.B) {
	for _, batch := range []int{1, 74, 133, 256} {
		b.Run(fmt.Sprintf("batch%d", batch), func(b *testing.B) { benchBatchFloor(b, batch) })
	}
}

func benchBatchFloor(b *testing.B, batch int) {
	perIter := 50_000
	if batch == 1 {
		perIter = 1000
	}
	bucketBatches, bucketOutcomes := []byte("batches"), []byte("outcomes")
	db := floorDB(b, bucketBatches, bucketOutcomes)
	e := benchEntry(0)
	e.ReceivedAt, e.BudgetStart = time.Now(), time.Now()
	msg := encodeMessage(nil, e, 0)
	e.State, e.Attempts = StateDone, 1
	done := encodeStatus(nil, e)
	var msgs, outs []byte
	var seq uint64
	var commitTime time.Duration
	ts0 := db.Stats().TxStats
	cpu0 := processCPU()
	start := time.Now()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i := 0; i < perIter; i += batch {
			msgs, outs = msgs[:0], outs[:0]
			for k := 0; k < batch; k++ {
				msgs = binary.AppendUvarint(msgs, uint64(len(msg)))
				msgs = append(msgs, msg...)
				outs = binary.AppendUvarint(outs, uint64(len(done)))
				outs = append(outs, done...)
			}
			first := seq + 1
			seq += uint64(batch)
			t0 := time.Now()
			if err := db.Update(func(tx *bolt.Tx) error {
				bs, os := tx.Bucket(bucketBatches), tx.Bucket(bucketOutcomes)
				bs.FillPercent, os.FillPercent = 1.0, 1.0
				if err := bs.Put(u64(first), msgs); err != nil {
					return err
				}
				if first > uint64(batch) { // the batch before, settled
					return os.Put(u64(first-uint64(batch)), outs)
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			commitTime += time.Since(t0)
			if batch == 1 {
				time.Sleep(time.Millisecond)
			}
		}
	}
	b.StopTimer()
	el := time.Since(start)
	commits := float64(seq) / float64(batch)
	if batch == 1 {
		ts := db.Stats().TxStats
		b.ReportMetric(float64(commitTime.Microseconds())/commits, "µs/commit")
		b.ReportMetric(float64(ts.GetWrite()-ts0.GetWrite())/commits, "pages/commit")
		return
	}
	b.ReportMetric(float64(seq)/el.Seconds(), "entries/s")
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(seq), "cpu-µs/entry")
}

// floorDB opens a bare bbolt file as the journal opens its own (page
// size, freelist) with the given buckets, closed when b ends.
func floorDB(b *testing.B, buckets ...[]byte) *bolt.DB {
	db, err := bolt.Open(filepath.Join(b.TempDir(), "floor.db"), 0o600, &bolt.Options{PageSize: DefaultPageSize, FreelistType: bolt.FreelistMapType})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error {
		for _, name := range buckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	return db
}

// BenchmarkOutboxDue measures the relay's look at the outbox (Outbox of
// up to 512 due answers) while 200,000 answers wait for their retry time
// (a results broker away) and a few are due: the look must cost what is
// due, not what waits. The answers are written into the file before Open,
// as a restart with a long outbox finds them.
func BenchmarkOutboxDue(b *testing.B) {
	const waiting, due = 200_000, 8
	clk := newClock()
	path := filepath.Join(b.TempDir(), "agentq.db")
	j, err := Open(path, Options{Logger: quietLogger(), Now: clk.Now})
	if err != nil {
		b.Fatal(err)
	}
	j.Close()
	writeOutbox(b, path, waiting, func(i int) *Out {
		m := &Out{Seq: uint64(i + 1), Kind: "result", Target: fmt.Sprint("results-", i%3), Body: body512,
			Headers: []Header{{"agentq-result-id", fmt.Sprint("x-", i)}}, CreatedAt: clk.Now(),
			Attempts: 3, LastError: "connection refused", NextAt: clk.Now().Add(time.Duration(1+i%600) * time.Second / 2)}
		if i%(waiting/due) == waiting/due/2 {
			m.NextAt = clk.Now().Add(-time.Second) // due: spread over the ids
		}
		return m
	})
	t0 := time.Now()
	j, err = Open(path, Options{Logger: quietLogger(), Now: clk.Now})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	open := time.Since(t0)
	const looks = 50
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for range looks {
			got, err := j.Outbox(512, clk.Now())
			if err != nil || len(got) != due {
				b.Fatalf("look: %d due, %v; want %d", len(got), err, due)
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(looks*b.N), "ns/look")
	b.ReportMetric(float64(open.Milliseconds()), "ms/open")
}

// writeOutbox writes n outbox records made by mk straight into the
// journal file at path (closed), ids 1 to n.
func writeOutbox(tb testing.TB, path string, n int, mk func(i int) *Out) {
	tb.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketOutbox)
		if err != nil {
			return err
		}
		b.FillPercent = 1.0
		var buf []byte
		for i := 0; i < n; i++ {
			id, err := b.NextSequence()
			if err != nil {
				return err
			}
			m := mk(i)
			m.ID = id
			buf = encodeOut(buf[:0], m)
			if err := b.Put(u64(id), bytes.Clone(buf)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}
