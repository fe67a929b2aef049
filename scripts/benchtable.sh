#!/usr/bin/env bash
# benchtable.sh turns `go test -bench` output (bench.out) into the tables
# the README's performance section shows.
set -euo pipefail
in=${1:-bench.out}
metric() { # benchmark-name unit
  awk -v b="$1" -v u="$2" '$1 ~ "^"b"(-[0-9]+)?$" { for (i = 2; i < NF; i++) if ($(i+1) == u) { print $i; exit } }' "$in"
}
num() { awk -v n="${1:-0}" 'BEGIN { s = sprintf("%.0f", n); o = ""; while (length(s) > 3) { o = "," substr(s, length(s) - 2) o; s = substr(s, 1, length(s) - 3) } print s o }'; }
f1() { awk -v n="${1:-0}" 'BEGIN { printf "%.1f", n }'; }
f2() { awk -v n="${1:-0}" 'BEGIN { printf "%.2f", n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "n/a" }'; }

app=$(metric BenchmarkAppend256 entries/s)
naive=$(metric BenchmarkAppendNaive entries/s)
P=BenchmarkPipelineSTOMP A=BenchmarkPipelineAMQP M=BenchmarkPipelineMQTT R=BenchmarkPipelineResults
cat <<TABLE
Measured $(date -u +%Y-%m-%d) on $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(go version | awk '{print $3}'), RabbitMQ $(rabbitmqctl -q version 2>/dev/null || echo '?'); fsync on, 512-byte bodies, persistent messages. Each consumer is a process of its own; CPU is its user+sys time per message.

Whole pipeline, real binary with default settings, 100,000 messages, prefetch 1000, same run; STOMP and AMQP: the median of $(num "$(metric $P rounds)") rounds of agentq and each bare consumer, ratios taken within a round, their range in brackets:

| consumer | msg/s | CPU µs/msg | agentq vs it: msg/s, CPU |
|---|---|---|---|
| agentq over STOMP (journal, fsync, ACK, dispatch, settle) | $(num "$(metric $P agentq-msg/s)") | $(f1 "$(metric $P agentq-cpu-us/msg)") | |
| bare go-stomp, client-individual, ACK each | $(num "$(metric $P individual-msg/s)") | $(f1 "$(metric $P individual-cpu-us/msg)") | **$(f2 "$(metric $P ratio-msg/s-vs-individual)")×** ($(f2 "$(metric $P ratio-msg/s-vs-individual-min)")–$(f2 "$(metric $P ratio-msg/s-vs-individual-max)")), $(f2 "$(metric $P ratio-cpu-vs-individual)")× ($(f2 "$(metric $P ratio-cpu-vs-individual-min)")–$(f2 "$(metric $P ratio-cpu-vs-individual-max)")) |
| bare go-stomp, auto-ack | $(num "$(metric $P auto-msg/s)") | $(f1 "$(metric $P auto-cpu-us/msg)") | **$(f2 "$(metric $P ratio-msg/s-vs-auto)")×** ($(f2 "$(metric $P ratio-msg/s-vs-auto-min)")–$(f2 "$(metric $P ratio-msg/s-vs-auto-max)")), $(f2 "$(metric $P ratio-cpu-vs-auto)")× ($(f2 "$(metric $P ratio-cpu-vs-auto-min)")–$(f2 "$(metric $P ratio-cpu-vs-auto-max)")) |
| agentq over AMQP 0-9-1 | $(num "$(metric $A agentq-msg/s)") | $(f1 "$(metric $A agentq-cpu-us/msg)") | $(ratio "$(metric $A agentq-msg/s)" "$(metric $P agentq-msg/s)")× agentq over STOMP |
| bare amqp091-go, manual multiple-acks | $(num "$(metric $A manual-msg/s)") | $(f1 "$(metric $A manual-cpu-us/msg)") | **$(f2 "$(metric $A ratio-msg/s-vs-manual)")×** ($(f2 "$(metric $A ratio-msg/s-vs-manual-min)")–$(f2 "$(metric $A ratio-msg/s-vs-manual-max)")), $(f2 "$(metric $A ratio-cpu-vs-manual)")× ($(f2 "$(metric $A ratio-cpu-vs-manual-min)")–$(f2 "$(metric $A ratio-cpu-vs-manual-max)")) |
| bare amqp091-go, auto-ack | $(num "$(metric $A auto-msg/s)") | $(f1 "$(metric $A auto-cpu-us/msg)") | **$(f2 "$(metric $A ratio-msg/s-vs-auto)")×** ($(f2 "$(metric $A ratio-msg/s-vs-auto-min)")–$(f2 "$(metric $A ratio-msg/s-vs-auto-max)")), $(f2 "$(metric $A ratio-cpu-vs-auto)")× ($(f2 "$(metric $A ratio-cpu-vs-auto-min)")–$(f2 "$(metric $A ratio-cpu-vs-auto-max)")) |
| agentq over MQTT, QoS 1 | $(num "$(metric $M agentq-msg/s)") | $(f1 "$(metric $M agentq-cpu-us/msg)") | |
| bare paho, QoS 1, auto-ack | $(num "$(metric $M auto-msg/s)") | $(f1 "$(metric $M auto-cpu-us/msg)") | **$(f2 "$(metric $M ratio-msg/s-vs-auto)")×**, $(f2 "$(metric $M ratio-cpu-vs-auto)")× |

agentq over STOMP kept $(f1 "$(metric $P agentq-rssanon-MiB)") MiB of private memory (RssAnon) at most and its journal file took $(num "$(metric $P journal-bytes/msg)") bytes per message, done entries included. Of that, $(num "$(metric $P journal-live-bytes/msg)") bytes per message are data (its pages less the free ones; the rest is bbolt growing the file in steps of up to 16 MiB, and pages that churn freed): **$(f2 "$(metric $P journal-live-vs-own)")×** a message's own $(num "$(metric $P msg-own-bytes)") bytes (the 512-byte body and the headers as delivered; target ≤ 1.5×); over AMQP, whose deliveries carry fewer header bytes, $(num "$(metric BenchmarkPipelineAMQP journal-live-bytes/msg)") bytes of data per message, **$(f2 "$(metric BenchmarkPipelineAMQP journal-live-vs-own)")×** its own $(num "$(metric BenchmarkPipelineAMQP msg-own-bytes)"). A group commit carried $(f1 "$(metric $P msgs/commit)") messages on average.

| what | figure | target |
|---|---|---|
| tasks in, results out over STOMP (HTTP backend, 20,000 each way, a receipt per SEND) | $(num "$(metric $R/stomp results-msg/s)") msg/s, $(f1 "$(metric $R/stomp results-cpu-us/msg)") µs/msg; without results $(num "$(metric $R/stomp no-results-msg/s)") msg/s: **$(f2 "$(metric $R/stomp ratio-msg/s)")×**. The agent's CPU ratio $(f2 "$(metric $R/stomp agent-cpu-ratio)")×; the broker's CPU per task $(f1 "$(metric $R/stomp no-results-broker-cpu-us/msg)") → $(f1 "$(metric $R/stomp results-broker-cpu-us/msg)") µs; the ratio agent and broker CPU allow on shared cores: $(f2 "$(metric $R/stomp shared-cpu-ratio)")× | ≥ 0.8× |
| the same, Globus-shaped over AMQP (tasks queue in; results to a topic exchange, publisher confirms, mandatory) | $(num "$(metric $R/amqp results-msg/s)") msg/s, $(f1 "$(metric $R/amqp results-cpu-us/msg)") µs/msg; without results $(num "$(metric $R/amqp no-results-msg/s)") msg/s: **$(f2 "$(metric $R/amqp ratio-msg/s)")×**. The agent's CPU ratio $(f2 "$(metric $R/amqp agent-cpu-ratio)")×; the broker's CPU per task $(f1 "$(metric $R/amqp no-results-broker-cpu-us/msg)") → $(f1 "$(metric $R/amqp results-broker-cpu-us/msg)") µs, and $(f1 "$(metric $R/amqp bare-publish-broker-cpu-us/msg)") µs per message for a bare publisher; shared cores allow $(f2 "$(metric $R/amqp shared-cpu-ratio)")× | ≥ 0.8× |
| end to end through the binary at 1,000 msg/s (publish → journal → ACK → HTTP backend), persistent messages (the broker fsyncs on the same disk) | p50 $(metric BenchmarkEndToEndBinary/persistent p50-ms) ms, p99 $(metric BenchmarkEndToEndBinary/persistent p99-ms) ms (a group commit took $(metric BenchmarkEndToEndBinary/persistent commit-ms) ms on average, $(metric BenchmarkEndToEndBinary/persistent commits/msg) per message; receipt to the backend call's start, from agentq_dispatch_wait_seconds: $(metric BenchmarkEndToEndBinary/persistent agent-wait-mean-ms) ms mean). In the same run the broker alone, publish to a bare consumer's receipt: p50 $(metric BenchmarkEndToEndBinary/persistent bare-p50-ms) ms, p99 $(metric BenchmarkEndToEndBinary/persistent bare-p99-ms) ms | p50 ≤ 2, p99 ≤ 5 ms |
| the same, transient messages (the journal has the disk to itself, as with a broker on another machine) | p50 $(metric BenchmarkEndToEndBinary/transient p50-ms) ms, p99 $(metric BenchmarkEndToEndBinary/transient p99-ms) ms (commit $(metric BenchmarkEndToEndBinary/transient commit-ms) ms); the broker alone: p50 $(metric BenchmarkEndToEndBinary/transient bare-p50-ms) ms, p99 $(metric BenchmarkEndToEndBinary/transient bare-p99-ms) ms | p50 ≤ 2, p99 ≤ 5 ms |
| journal alone at 1,000 msg/s: append, then claim (16 KiB pages; 4 KiB) | append p50 $(metric BenchmarkLatency1000/page16k append-p50-ms) ms, p99 $(metric BenchmarkLatency1000/page16k append-p99-ms) ms; to claim p50 $(metric BenchmarkLatency1000/page16k to-claim-p50-ms) ms (4 KiB pages: append p50 $(metric BenchmarkLatency1000/page4k append-p50-ms) ms); a commit $(metric BenchmarkLatency1000/page16k µs/commit) µs, $(metric BenchmarkLatency1000/page16k pages/commit) pages | |
| the disk's floor under a commit: one 16 KiB page written and fdatasynced, then another (bbolt's pages, then its meta page), one pair a millisecond | p50 $(metric BenchmarkDiskSync two-syncs-p50-ms) ms, p99 $(metric BenchmarkDiskSync two-syncs-p99-ms) ms | |
| a one-append commit on a journal that a 1M-entry backlog drained and expired left mostly free pages, and after the compaction \`agentq run\` does at start | $(num "$(metric BenchmarkCommitAfterDrain sparse-µs/commit)") µs ($(num "$(metric BenchmarkCommitAfterDrain free-pages)") free pages), compacted $(num "$(metric BenchmarkCommitAfterDrain compacted-µs/commit)") µs; the file $(num "$(metric BenchmarkCommitAfterDrain MiB-before)") → $(f1 "$(metric BenchmarkCommitAfterDrain MiB-after)") MiB | |
| end to end in process (publish → backend start) | p50 $(metric BenchmarkEndToEndLatency p50-ms) ms, p99 $(metric BenchmarkEndToEndLatency p99-ms) ms | |
| journal alone: append + claim + settle, 256 producers, 8 workers | $(num "$(metric BenchmarkJournalThroughput entries/s)") entries/s, $(num "$(metric BenchmarkJournalThroughput bytes/msg)") bytes/msg | ≥ 100,000/s |
| bbolt alone, no index: a message and a status record appended and the status rewritten a batch later, per entry, one goroutine (the floor of any journal that keeps a bbolt record per message) | $(num "$(metric BenchmarkBboltFloor/batch74 entries/s)") entries/s at the journal's 74 entries a commit, $(num "$(metric BenchmarkBboltFloor/batch256 entries/s)") at 256; $(metric BenchmarkBboltFloor/batch74 cpu-µs/entry) and $(metric BenchmarkBboltFloor/batch256 cpu-µs/entry) µs CPU per entry | |
| bbolt alone, a record per commit instead of per message: the batch's messages in one record, the batch before's outcomes in another, one goroutine (the floor of a journal whose indexes live in memory) | $(num "$(metric BenchmarkBatchFloor/batch74 entries/s)") entries/s at 74 entries a commit, $(num "$(metric BenchmarkBatchFloor/batch256 entries/s)") at 256; $(metric BenchmarkBatchFloor/batch74 cpu-µs/entry) and $(metric BenchmarkBatchFloor/batch256 cpu-µs/entry) µs CPU per entry; at one entry a commit, a message a millisecond: $(num "$(metric BenchmarkBatchFloor/batch1 µs/commit)") µs and $(metric BenchmarkBatchFloor/batch1 pages/commit) pages a commit | |
| journal CPU per entry: append, claim, settle in batches of 256, one goroutine | $(metric BenchmarkCycleCPU cpu-µs/entry) µs | |
| journal Append, 256 concurrent appenders | $(num "$app") entries/s ($(metric BenchmarkAppend256 ops/commit) ops per commit) | ≥ 50,000/s |
| naive baseline, one transaction per entry | $(num "$naive") entries/s; group commit is **$(ratio "$app" "$naive")×** | ≥ 30× |
| pick next ready entry, 10k / 1M entries | $(num "$(metric BenchmarkClaim/10k ns/pick)") / $(num "$(metric BenchmarkClaim/1000k ns/pick)") ns per claim (in memory: no commit) | flat |
| Open of a 1M-entry journal | $(metric BenchmarkOpen1M ms/open) ms | ≤ 1 s |
| dispatch, log backend, 8 workers, 100k entries / 1,000 keys | $(num "$(metric BenchmarkDispatch entries/s)") entries/s | ≥ 20,000/s |
| restart to first ACK, 1M-entry journal (real binary) | $(metric BenchmarkRestart1M ms-to-first-ack) ms | |
| resident memory, 1M-entry backlog | $(metric BenchmarkRestart1M MiB-rss) MiB | ≤ 50 MiB |
| dashboard over 1M entries, median (worst of 20): overview | $(metric BenchmarkDashboard1M overview-ms) ms ($(metric BenchmarkDashboard1M overview-worst-ms)) | ≤ 200 ms |
| first page: all / pending / type pattern / stuck | $(metric BenchmarkDashboard1M entries-ms) / $(metric BenchmarkDashboard1M pending-ms) / $(metric BenchmarkDashboard1M type-ms) / $(metric BenchmarkDashboard1M stuck-ms) ms | ≤ 200 ms |
| first page filtered by one key (1 in 1,000 entries) | $(metric BenchmarkDashboard1M key-ms) ms | ≤ 200 ms |
TABLE
