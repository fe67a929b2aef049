package main

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/agentq/agentq/admin"
)

// TestSIGHUPDrains: SIGHUP stops the agent like SIGTERM (drain, clean exit)
// instead of killing it outright, and the running handler does not outlive
// it, so a restarted agent never runs two handlers of one key at once.
func TestSIGHUPDrains(t *testing.T) {
	requireBroker(t)
	dir := t.TempDir()
	journal := filepath.Join(dir, "agentq.db")
	pidFile := filepath.Join(dir, "handler.pid")
	script := filepath.Join(dir, "handler.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho $$ > "+pidFile+".tmp && mv "+pidFile+".tmp "+pidFile+"\nexec sleep 60\n"), 0o755)
	src := testQueueURL(t)
	a := startAgent(t, journal, "--journal", journal, "--source", src, "--admin", "127.0.0.1:0", "--exec", script, "--drain-timeout", "1s")
	if code, _, errOut := runMain(t, `{"n":1}`, "send", src); code != 0 {
		t.Fatalf("send: %s", errOut)
	}
	var pid int
	waitFor(t, "the handler to start", 30*time.Second, func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return false
		}
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return pid > 0
	})
	a.cmd.Process.Signal(syscall.SIGHUP)
	select {
	case code := <-a.done:
		a.done <- code
		if code != 0 {
			t.Fatalf("agent exit code %d after SIGHUP, want 0 (clean drain):\n%s", code, a.logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("agent still running 30s after SIGHUP:\n%s", a.logs.String())
	}
	if !strings.Contains(a.logs.String(), "hangup") {
		t.Errorf("the log does not say why the agent stopped:\n%s", a.logs.String())
	}
	waitFor(t, "the handler to be gone", 10*time.Second, func() bool {
		return syscall.Kill(pid, 0) != nil
	})
	// The message was not lost: it waits in the journal for the next run.
	if list := inspectJSON(t, journal, "--state", "pending"); len(list) != 1 {
		t.Errorf("pending after SIGHUP = %d, want 1", len(list))
	}
}

// TestSignalWhileStarting: a SIGTERM that arrives while the agent is still
// starting (here: probing two brokers that accept the connection and never
// answer the TLS handshake, 2 s each) stops it cleanly, exit 0 and its
// admin address file removed, instead of killing it outright.
func TestSignalWhileStarting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 100)
	t.Cleanup(func() {
		ln.Close()
		for len(held) > 0 {
			(<-held).Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c // and never answer
		}
	}()
	journal := filepath.Join(t.TempDir(), "agentq.db")
	silent := "stomp+tls://guest:guest@" + ln.Addr().String()
	// The admin file is written just before the probes.
	a := startAgent(t, journal, "--journal", journal, "--admin", "127.0.0.1:0",
		"--source", silent+"/queue/a", "--source", silent+"/queue/b")
	if code := a.stop(t); code != 0 {
		t.Fatalf("agent exit code %d after SIGTERM while starting, want 0:\n%s", code, a.logs.String())
	}
	if !strings.Contains(a.logs.String(), "stopped cleanly") {
		t.Errorf("the log does not say it stopped:\n%s", a.logs.String())
	}
	if _, err := os.Stat(admin.AddrFile(journal)); err == nil {
		t.Errorf("the admin address file %s is left behind", admin.AddrFile(journal))
	}
}
