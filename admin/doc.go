// Package admin is the running agent's HTTP side and the operator's view of
// a journal: the admin server (health, readiness, metrics, profiles, the
// JSON API under /v1/), the Store that inspect and replay work on, and the
// address file that lets the command find a running agent.
//
// # Live and offline
//
// A Store answers the same questions in two ways. Local reads the journal
// file directly: the agent is stopped, or this is the agent itself serving
// its API. Remote asks a running agent's API, because bbolt lets only one
// process open a journal for writing. Open tries the file first and falls
// back to the API named in the address file (journal + ".admin"). Both give
// byte-identical answers, which the tests check, so the command's output
// never depends on whether the agent runs.
//
// # Who may ask
//
// The server binds loopback unless a token is configured. Every request's
// Host must be a loopback name, an address the server is bound to, or an
// allowed host: that stops DNS rebinding, where a web page renames its own
// host to 127.0.0.1 and reads the API through the operator's browser. A
// request that changes state is refused when a browser marks it cross-site
// (Sec-Fetch-Site, Origin) or when it carries a body that is not JSON, and
// it always needs a token: the configured one, or one the server generates
// at start and writes to the address file with mode 0600. The command run
// by the agent's own user reads it from there; other users of a shared
// login node cannot replay work through the loopback port.
//
// # Metrics
//
// Metrics registers agentq's Prometheus metrics. Counters that the journal
// and sources already keep are read at scrape time, so the hot path pays
// nothing for them. Source URLs are never labels: they can carry secrets.
package admin
