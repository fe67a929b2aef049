// Package worker drains the journal (package queue) into backends: a
// command (Exec), an HTTP endpoint (HTTP) or the log (Log). It is the only
// package that imports cenkalti/backoff.
//
// # How a Pool runs
//
// Pool.Run starts three kinds of goroutine:
//
//   - the dispatcher claims ready entries from the journal, at most
//     Options.InFlight claimed but not yet settled, and hands them to the
//     workers. When nothing is ready it sleeps until the journal signals
//     Ready or its next retry time comes.
//   - Options.Workers workers each take an entry, pick its backend with
//     the Router (the first route whose AMQP topic pattern matches the
//     entry's type), call it and turn the result into an outcome: done,
//     retry at a time, stuck, or released.
//   - the settler collects outcomes and records them in group commits
//     while the workers go on.
//
// Order within a key comes from the journal, not from the pool: Claim
// only ever returns the first unfinished entry of a key, so the pool can
// run any mix of claimed entries in parallel. A stuck entry blocks its key
// until an operator replays it.
//
// Pool.Pause(pattern) keeps entries whose type matches out of dispatch:
// the journal leaves them pending and unclaimed (this needs a journal with
// ClaimMatching, see MatchingClaimer), claimed ones not yet started are
// released, running calls finish. A paused entry still holds its key.
// Pool.InFlight reports running calls per route.
//
// # At least once
//
// A backend call may run more than once for the same entry: after a
// failure and retry, after a shutdown cut a call short, after a crash
// between the call and the commit of its outcome, or when the outcome
// could not be written. A backend must therefore be idempotent or tolerate
// repeats. HTTP sends an Idempotency-Key that is the same on every attempt;
// a command gets AGENTQ_SEQ (stable) and AGENTQ_ATTEMPT.
//
// # Retries
//
// A failed call is retried on the schedule of Options.Policy (see
// DefaultPolicy: 1 s doubling to 5 min with ±20 % jitter, for up to 24 h
// from arrival or last replay). The next attempt time is written to the
// journal, so a restart keeps the schedule. A backend can ask for a longer
// wait with RetryAfter, and can skip retries with Permanent: the entry is
// then parked as stuck, as it is when the budget is spent, when no route
// matches its type, and when ingest marked it as bad input.
//
// The journal itself can fail to write (a full disk). Claims are then
// retried with backoff (50 ms doubling to 5 s) until they work or Run's
// context ends; outcomes are retried the same way, and after Run's context
// has ended a few more times before the pool gives up; their entries are
// still pending on disk (a claim is kept in memory only), so the next
// start runs them again.
//
// # Shutdown
//
// When Run's context ends the dispatcher stops claiming and releases what
// it claimed but did not hand over. Running calls may finish for up to
// Options.DrainTimeout; then, or at once on Pool.Abort (a second signal),
// their context is cancelled. A cancelled call is released: pending again
// at once, its attempt not counted. Run returns once every outcome is
// settled.
//
// # Exec
//
// A command gets the body on stdin and runs in its own process group.
// Exit status 0 is done, whatever children it left behind; 65 (EX_DATAERR)
// is a permanent failure (stuck); any other status, a signal or the
// timeout is retried. The tail of stderr becomes the error. Stdout, up to
// ExecConfig.MaxOutput (1 MiB), is the call's output in Result.Output; a
// command that exits 0 with more fails permanently with ErrOutputTooLarge.
//
// The process group is killed with SIGKILL when the call returns, however
// it returns: success, failure, timeout or cancellation. So a child left
// running in the background cannot hold the call, or outlive it. If the
// agent itself dies, on Linux the kernel kills the command (parent-death
// signal) and a small /bin/sh watchdog per call, which notices the agent's
// end as the end of a pipe, kills the command's process group; so a
// restarted agent never runs a second handler beside a leftover one.
// Children that leave the group (setsid) escape both.
//
// The environment of a command is the agent's, minus variables that may be
// secrets, plus ExecConfig.Env, plus the message's context:
//
//	AGENTQ_SEQ, AGENTQ_TYPE, AGENTQ_KEY, AGENTQ_ATTEMPT,
//	AGENTQ_SOURCE, AGENTQ_DESTINATION
//	AGENTQ_HEADER_<NAME>      one per header; NAME is the header name with
//	                          ASCII letters upper-cased and every other byte
//	                          but digits turned into '_'; the first of
//	                          repeated or colliding names wins
//	AGENTQ_HEADERS_TRUNCATED  variables whose value was cut (below)
//	AGENTQ_HEADERS_DROPPED    variables left out (below): a value with a
//	                          NUL, a header name over 1 KiB; the type, key,
//	                          source and destination follow the same rules
//
// Hidden from the agent's environment: the names in ExecConfig.HideEnv
// (the passcode_env variables of the sources belong there) and every
// AGENTQ_* variable the agent inherited: they are its own configuration
// (AGENTQ_SOURCE, AGENTQ_RESULTS, AGENTQ_HTTP, ... can carry a password in
// their URL; AGENTQ_ADMIN_TOKEN is the admin token). The AGENTQ_* a
// handler sees are the message's, above.
//
// Header values keep newlines. A value with a NUL byte cannot be passed in
// the environment, so that header is left out and named in
// AGENTQ_HEADERS_DROPPED. Linux caps one environment string at 128 KiB and
// arguments plus environment at a quarter of the stack limit, and a
// command over either cap cannot start at all; so a value is cut to
// MaxHeaderEnvValue (32 KiB) and all header variables together to
// MaxHeaderEnvTotal (256 KiB), cut ones named in AGENTQ_HEADERS_TRUNCATED
// and ones that no longer fit in AGENTQ_HEADERS_DROPPED. The body, on
// stdin, has no such limit.
//
// # HTTP
//
// HTTP POSTs the body with the message's context in X-Agentq-* headers.
// 2xx is done, and the response body (up to HTTPConfig.MaxOutput) is the
// output; 408, 425, 429, 5xx, connection errors and timeouts are retried,
// honouring Retry-After; any other status (another 4xx, a 3xx: redirects
// are not followed) is permanent. A type or key a header cannot carry is
// sent percent-encoded and named in X-Agentq-Encoded.
package worker
