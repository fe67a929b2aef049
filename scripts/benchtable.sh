#!/usr/bin/env bash
# benchtable.sh turns `go test -bench` output (bench.out) into the table
# the README's performance section shows.
set -euo pipefail
in=${1:-bench.out}
metric() { # benchmark-name unit
  awk -v b="$1" -v u="$2" '$1 ~ "^"b"(-[0-9]+)?$" { for (i = 2; i < NF; i++) if ($(i+1) == u) { print $i; exit } }' "$in"
}
num() { awk -v n="${1:-0}" 'BEGIN { s = sprintf("%.0f", n); o = ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) } print s o }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "n/a" }'; }

app=$(metric BenchmarkAppend256 entries/s)
naive=$(metric BenchmarkAppendNaive entries/s)
cat <<TABLE
Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(go version | awk '{print $3}'), RabbitMQ $(rabbitmqctl -q version 2>/dev/null || echo '?'); fsync on, 512-byte bodies.

| what | figure | target |
|---|---|---|
| journal Append, 256 concurrent appenders | $(num "$app") entries/s ($(metric BenchmarkAppend256 ops/commit) ops per commit) | ≥ 50,000/s |
| naive baseline, one transaction per entry | $(num "$naive") entries/s; group commit is **$(ratio "$app" "$naive")×** | ≥ 30× |
| pick next ready entry, 10k entries | $(num "$(metric BenchmarkClaim/10k ns/pick)") ns per claim+fsync, $(num "$(metric BenchmarkClaim/10k ns/lookup)") ns per lookup | flat |
| pick next ready entry, 1M entries | $(num "$(metric BenchmarkClaim/1000k ns/pick)") ns per claim+fsync, $(num "$(metric BenchmarkClaim/1000k ns/lookup)") ns per lookup | flat |
| Open of a 1M-entry journal (100k pending) | $(metric BenchmarkOpen1M ms/open) ms | ≤ 1 s |
| ingest, bare go-stomp consumer (ACK only) | $(num "$(metric BenchmarkIngestVsBare bare-msg/s)") msg/s | |
| ingest, agentq client-individual (journal, fsync, ACK) | $(num "$(metric BenchmarkIngestVsBare agentq-individual-msg/s)") msg/s = **$(metric BenchmarkIngestVsBare ratio-individual)×** bare | ≥ 0.9× |
| ingest, agentq client mode | $(num "$(metric BenchmarkIngestVsBare agentq-client-msg/s)") msg/s = **$(metric BenchmarkIngestVsBare ratio-client)×** bare | ≥ 1.0× |
| dispatch, log backend, 8 workers, 100k entries / 1,000 keys | $(num "$(metric BenchmarkDispatch entries/s)") entries/s | ≥ 20,000/s |
| end-to-end publish → backend start at 1,000 msg/s | p50 $(metric BenchmarkEndToEndLatency p50-ms) ms, p99 $(metric BenchmarkEndToEndLatency p99-ms) ms | p99 ≤ 25 ms |
| restart to first ACK, 1M-entry journal (real binary) | $(metric BenchmarkRestart1M ms-to-first-ack) ms | |
| resident memory, 1M-entry backlog | $(metric BenchmarkRestart1M MiB-rss) MiB | |
TABLE
