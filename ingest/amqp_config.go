package ingest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
)

// AMQP 0-9-1 source URLs:
//
//	amqp://user:pass@host:5672/VHOST?queue=NAME[&exchange=EX&bind=KEY&bind=KEY2]
//	amqps://user@host:5671/VHOST?queue=NAME&ca=/etc/ssl/ca.pem
//
// The vhost is the URL path, percent-escaped ("%2F" for "/"); an empty
// path is "/". queue= alone consumes an existing queue as it is;
// exchange= (or single_active=true) makes agentq declare it durable.

// Defaults for AMQP sources.
const (
	DefaultAMQPPort  = "5672"
	DefaultAMQPSPort = "5671"
	// DefaultAMQPType is where an AMQP source takes the type from when no
	// type= SPEC is given: the routing key.
	DefaultAMQPType = "header:routing_key"
	// DefaultAMQPIDHeader identifies a message across redeliveries when
	// no id_header is given: the message_id property, when set.
	DefaultAMQPIDHeader = "message_id"
)

func (c *Config) isAMQP() bool { return c.Scheme == "amqp" || c.Scheme == "amqps" }

// parseAMQP takes the address and vhost from an amqp:// URL whose query
// parameters are already set.
func (c *Config) parseAMQP(u *url.URL) error {
	if c.VHost != "" {
		return errors.New("vhost=: for amqp:// URLs the vhost is the URL path: amqp://host/?queue=q for /, amqp://host/prod?queue=q, %2F for a / in it")
	}
	if c.Destination != "" {
		return errors.New("destination=: amqp:// URLs name the queue with queue=NAME")
	}
	p := strings.TrimPrefix(u.EscapedPath(), "/")
	if strings.Contains(p, "/") {
		return fmt.Errorf("vhost %q: the path is the vhost; write a / in it as %%2F", p)
	}
	vhost, err := url.PathUnescape(p)
	if err != nil {
		return fmt.Errorf("vhost %q: bad %%-escape", p)
	}
	if vhost == "" {
		vhost = DefaultVHost
	}
	c.VHost = vhost
	port := DefaultAMQPPort
	if c.Scheme == "amqps" {
		port = DefaultAMQPSPort
	}
	c.Addr = u.Host
	if u.Port() == "" {
		c.Addr = net.JoinHostPort(u.Hostname(), port)
	}
	if c.Queue == "" {
		if c.Exchange != "" {
			return errNoQueueName
		}
		return errors.New("missing queue: add ?queue=NAME (an existing queue, or with exchange=EX&bind=KEY one that agentq declares)")
	}
	return nil
}

// errNoQueueName refuses a server-named queue.
var errNoQueueName = errors.New("exchange= needs queue=NAME: agentq declares a durable queue of that name and binds it; " +
	"a server-named queue would go with the connection and lose what is published while the agent is down")

// resolveAMQP validates an AMQP source and fills in its defaults: the
// name is the queue's, the type is the routing key, the message_id
// property identifies redeliveries. For other schemes it refuses the
// AMQP-only parameters.
func (c *Config) resolveAMQP() error {
	if !c.isAMQP() {
		var set []string
		for _, p := range []struct {
			name string
			set  bool
		}{{"queue", c.Queue != ""}, {"exchange", c.Exchange != ""}, {"bind", len(c.Bindings) > 0}, {"exclusive", c.Exclusive}, {"single_active", c.SingleActive}} {
			if p.set {
				set = append(set, p.name+"=")
			}
		}
		if len(set) > 0 {
			return fmt.Errorf("source %q: %s: amqp:// and amqps:// only", c.Name, strings.Join(set, ", "))
		}
		return nil
	}
	name := c.Name
	if name == "" {
		name = c.Queue
	}
	var err error
	switch {
	case c.Queue == "" && c.Exchange != "":
		err = errNoQueueName
	case c.Queue == "":
		err = errors.New("missing queue=NAME")
	case c.AckMode != "" && c.AckMode != DefaultAckMode:
		err = errors.New("ack=: an amqp:// source acknowledges each journal commit with one basic.ack (multiple=true)")
	case c.Durable || c.DurableQueue != "":
		err = errors.New("durable=, durable_queue=: STOMP only; for AMQP, queue=NAME&exchange=EX&bind=KEY declares a durable queue")
	case c.SubscriptionID != "":
		err = errors.New("id=: STOMP only")
	case len(c.Headers) > 0:
		err = errors.New("header.NAME=: STOMP only")
	case len(c.Bindings) > 0 && c.Exchange == "":
		err = errors.New("bind= needs exchange=EX")
	case c.Exchange != "" && len(c.Bindings) == 0:
		err = errors.New("exchange= needs at least one bind=KEY (bind=%23 for every key; any key for a fanout exchange)")
	case c.Scheme == "amqp" && c.TLS != (TLSConfig{}):
		err = errors.New("TLS settings need amqps://")
	}
	if err != nil {
		return fmt.Errorf("source %q: %w", name, err)
	}
	c.Name = name
	c.Destination = "/amq/queue/" + c.Queue
	if c.TypeFrom.IsZero() {
		c.TypeFrom = Spec{Kind: "header", Arg: "routing_key"}
	}
	if c.IDHeader == "" {
		c.IDHeader = DefaultAMQPIDHeader
	}
	return nil
}

// declares reports whether the source declares its queue (and binds it)
// rather than consuming it as it is.
func (c *Config) declares() bool { return c.Exchange != "" || c.SingleActive }

// amqpString is String for AMQP sources.
func (c Config) amqpString() string {
	var b strings.Builder
	b.WriteString(c.Scheme + "://")
	if c.Login != "" {
		b.WriteString(url.User(c.Login).String())
		if c.Passcode != "" {
			b.WriteString(":" + redacted)
		}
		b.WriteString("@")
	}
	b.WriteString(c.Addr + "/")
	if c.VHost != DefaultVHost {
		b.WriteString(url.PathEscape(c.VHost))
	}
	q := []string{"queue=" + paramEscape(c.Queue)}
	if c.Exchange != "" {
		q = append(q, "exchange="+paramEscape(c.Exchange))
	}
	for _, k := range c.Bindings {
		q = append(q, "bind="+paramEscape(k))
	}
	if c.Exclusive {
		q = append(q, "exclusive=true")
	}
	if c.SingleActive {
		q = append(q, "single_active=true")
	}
	b.WriteString("?" + strings.Join(q, "&"))
	return b.String()
}

// paramEscape %-escapes what ParseURL would not read back as it is in a
// parameter value, keeping AMQP wildcards and "+" readable.
func paramEscape(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("%&#=?", c) >= 0 {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
