# agentq — see README.md. Every target is safe to run twice.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X 'main.Version=$(VERSION)'
BIN      := bin/agentq
TESTTIME ?= 20m

.PHONY: all build test bench run lint broker mosquitto chromium screenshots fuzz chaos clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/agentq

# broker makes a local RabbitMQ ready (installs it as root if missing).
broker:
	@bash scripts/broker.sh

# mosquitto makes a local Mosquitto 2.0 ready on 127.0.0.1:1884 (installs
# it as root if missing), for the MQTT tests.
mosquitto:
	@bash scripts/mosquitto.sh

# chromium installs Debian's chromium for the dashboard's browser test.
chromium:
	@bash scripts/chromium.sh

# screenshots refreshes the dashboard pictures the README shows.
screenshots: broker chromium
	AGENTQ_SCREENSHOTS=$(CURDIR)/testdata/screenshots $(GO) test -count=1 -run '^TestDashboardInBrowser$$' ./cmd/agentq

# test: vet, then every test with the race detector against the local broker.
# -p 1: one package at a time, because the ingest tests restart the broker.
test: broker mosquitto chromium
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) test -race -count=1 -p 1 -timeout $(TESTTIME) ./...

# bench: every benchmark once (each does a fixed amount of work), one
# package at a time, then the table for the README.
bench: broker mosquitto
	$(GO) test -run '^$$' -bench . -benchtime 1x -p 1 -timeout 30m ./... | tee bench.out
	@bash scripts/benchtable.sh bench.out

# run: the default agent against the local broker, journal in ./agentq.db.
run: broker build
	./$(BIN) run

# chaos: the full fault run over each of STOMP, AMQP 0-9-1 and MQTT
# (50,000 messages, 20+ SIGKILLs, broker restarts, cut connections, a full
# journal, per protocol); prints a table with a row per protocol, fails on
# loss. One protocol: CHAOSRUN='^TestChaos$$/^amqp$$'. On a broker that
# others use: CHAOSFLAGS=-chaos.norestart (no broker restarts).
CHAOSRUN   ?= ^TestChaos$$
CHAOSFLAGS ?=
# The agent log lines are filtered out; the exit status is go test's, not
# grep's (sh has no pipefail: fd 3 carries the status out of the pipe).
chaos: broker
	@exec 4>&1; rc=$$( { { $(GO) test -count=1 -run '$(CHAOSRUN)' -v -timeout 50m ./cmd/agentq -chaos.full $(CHAOSFLAGS) 2>&1; echo $$? >&3; } \
		| grep -v '^        {' >&4; } 3>&1 ); exit $$rc

# fuzz: a longer run of every fuzz target (the seed corpora run in make test).
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEntry$$' -fuzztime $(FUZZTIME) ./queue
	$(GO) test -run '^$$' -fuzz '^FuzzEntryRoundTrip$$' -fuzztime $(FUZZTIME) ./queue
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecords$$' -fuzztime $(FUZZTIME) ./queue
	$(GO) test -run '^$$' -fuzz '^FuzzDedupBatchRecord$$' -fuzztime $(FUZZTIME) ./queue
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRoute$$' -fuzztime $(FUZZTIME) ./queue
	$(GO) test -run '^$$' -fuzz '^FuzzParseURL$$' -fuzztime $(FUZZTIME) ./ingest
	$(GO) test -run '^$$' -fuzz '^FuzzExtract$$' -fuzztime $(FUZZTIME) ./ingest
	$(GO) test -run '^$$' -fuzz '^FuzzScanJSON$$' -fuzztime $(FUZZTIME) ./ingest
	$(GO) test -run '^$$' -fuzz '^FuzzFrameToEntry$$' -fuzztime $(FUZZTIME) ./ingest
	$(GO) test -run '^$$' -fuzz '^FuzzMatchPattern$$' -fuzztime $(FUZZTIME) ./worker
	$(GO) test -run '^$$' -fuzz '^FuzzLoadConfig$$' -fuzztime $(FUZZTIME) ./cmd/agentq

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

clean:
	rm -rf bin bench.out
