package queue

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestCrashChild is the child of TestCrashDurability. It appends from 16
// goroutines and, after each Append returns, prints "seq sum" for every
// entry: those entries are acknowledged and must survive anything. With
// AGENTQ_CRASH_WORK set it also claims and settles entries, so a kill
// leaves some running.
func TestCrashChild(t *testing.T) {
	path := os.Getenv("AGENTQ_CRASH_JOURNAL")
	if path == "" {
		return
	}
	j, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	ctx := context.Background()
	for g := 0; g < 16; g++ {
		go func() {
			rng := rand.New(rand.NewSource(int64(os.Getpid()*100 + g)))
			for {
				n := 1 + rng.Intn(4)
				es := make([]*Entry, n)
				sums := make([]string, n)
				for i := range es {
					body := make([]byte, rng.Intn(2048))
					rng.Read(body)
					sum := sha256.Sum256(body)
					sums[i] = hex.EncodeToString(sum[:])
					es[i] = &Entry{Key: fmt.Sprint("k", rng.Intn(50)), Body: body, Headers: []Header{{"sum", sums[i]}}}
				}
				res, err := j.Append(ctx, es...)
				if err != nil {
					os.Exit(4)
				}
				mu.Lock()
				for i, r := range res {
					fmt.Fprintf(out, "%d %s\n", r.Seq, sums[i])
				}
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	if os.Getenv("AGENTQ_CRASH_WORK") != "" {
		go func() {
			for {
				es, err := j.Claim(ctx, 32)
				if err != nil {
					os.Exit(5)
				}
				var outs []Outcome
				for i, e := range es {
					if i%2 == 0 { // leave half running
						outs = append(outs, Outcome{Seq: e.Seq, Kind: Done})
					}
				}
				if err := j.Settle(ctx, outs...); err != nil {
					os.Exit(6)
				}
			}
		}()
	}
	select {}
}

// Ensure every acknowledged append survives SIGKILL at random moments, 25
// times over: each reopen finds every acknowledged entry intact, the
// invariants hold, no entry is left running, and sequence numbers never
// go backwards.
func TestCrashDurability(t *testing.T) {
	cycles := 25
	if testing.Short() {
		cycles = 5
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	acked := map[uint64]string{}
	var maxBefore uint64
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	deadline := time.Now().Add(90 * time.Second)
	for cycle := 0; cycle < cycles; cycle++ {
		if time.Now().After(deadline) {
			t.Fatalf("only %d kill cycles within the time bound", cycle)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "AGENTQ_CRASH_JOURNAL="+path)
		if cycle%2 == 1 {
			cmd.Env = append(cmd.Env, "AGENTQ_CRASH_WORK=1")
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Let it acknowledge a few appends, then kill it at a random moment.
		kill := time.After(time.Duration(20+rng.Intn(280)) * time.Millisecond)
		seen, killed := 0, false
		var thisCycle []uint64
	read:
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					break read
				}
				f := strings.Fields(line)
				if len(f) != 2 {
					continue // test framework output
				}
				seq, err := strconv.ParseUint(f[0], 10, 64)
				if err != nil {
					continue
				}
				acked[seq] = f[1]
				thisCycle = append(thisCycle, seq)
				seen++
			case <-kill:
				if seen < 5 {
					kill = time.After(10 * time.Millisecond)
					continue
				}
				if !killed {
					killed = true
					cmd.Process.Signal(syscall.SIGKILL)
				}
			}
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("cycle %d: child ended by itself: %v\n%s", cycle, err, stderr.String())
		}
		for _, s := range thisCycle {
			if s <= maxBefore {
				t.Fatalf("cycle %d: seq %d acknowledged, not above %d from earlier cycles: sequence went backwards", cycle, s, maxBefore)
			}
		}

		j, err := Open(path, Options{Logger: quietLogger()})
		if err != nil {
			t.Fatalf("cycle %d: reopen: %v", cycle, err)
		}
		missing := 0
		for seq, sum := range acked {
			e, err := j.Get(seq)
			if err != nil {
				missing++
				t.Errorf("cycle %d: acknowledged entry %d: %v", cycle, seq, err)
				continue
			}
			got := sha256.Sum256(e.Body)
			if hdr, _ := e.Header("sum"); hex.EncodeToString(got[:]) != sum || hdr != sum {
				t.Fatalf("cycle %d: entry %d body damaged", cycle, seq)
			}
		}
		if err := j.Check(); err != nil {
			t.Fatalf("cycle %d: invariants after reopen: %v", cycle, err)
		}
		if r := j.Stats().ByState[StateRunning]; r != 0 {
			t.Fatalf("cycle %d: %d entries still running after reopen", cycle, r)
		}
		maxBefore = j.LastSeq()
		j.Close()
		if missing > 0 {
			t.FailNow()
		}
	}
	t.Logf("%d kill cycles, %d acknowledged entries, all present and intact", cycles, len(acked))
}
