package ingest

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
)

// ReadSecretFile returns the contents of a file holding one secret (a
// passcode, a token), with one trailing newline ("\n" or "\r\n") removed.
// Errors name the file, never its contents; an empty secret is an error.
func ReadSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("cannot read secret file %s: %w", path, err)
	}
	s := string(b)
	if t, ok := strings.CutSuffix(s, "\n"); ok {
		s = strings.TrimSuffix(t, "\r")
	}
	if s == "" {
		return "", fmt.Errorf("secret file %s is empty", path)
	}
	return s, nil
}

// redacted replaces a hidden secret.
const redacted = "xxxxx"

// RedactURL returns s with its password and any passcode-like query
// parameter hidden, for logs and error messages. The userinfo ends at the
// last "@" before the host, so a password that itself holds "@" (as in
// guest:S3cr@tPW@host) is hidden whole. Text that is not a URL is
// returned unchanged.
func RedactURL(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		return s
	}
	head, rest := s[:i+3], s[i+3:]
	// The authority ends at the first "/", "?" or "#" after its last "@";
	// a password with a raw "/", "?" or "#" is hidden up to the next "@".
	auth := rest
	if j := strings.IndexAny(rest, "/?#"); j >= 0 {
		auth = rest[:j]
	}
	at := strings.LastIndex(auth, "@")
	if at < 0 {
		if c := strings.Index(auth, ":"); c >= 0 && !allDigits(auth[c+1:]) {
			// user:pa/ss@host: the password runs past the first "/".
			at = strings.Index(rest, "@")
		}
	}
	if at >= 0 {
		user := rest[:at]
		if c := strings.Index(user, ":"); c >= 0 {
			user = user[:c] + ":" + redacted
		}
		rest = user + rest[at:]
	}
	q := strings.Index(rest, "?")
	if q < 0 {
		return head + rest
	}
	query, frag, hasFrag := strings.Cut(rest[q+1:], "#")
	parts := strings.Split(query, "&")
	for k, part := range parts {
		name, _, ok := strings.Cut(part, "=")
		if ok && secretParam(name) {
			parts[k] = name + "=" + redacted
		}
	}
	out := head + rest[:q+1] + strings.Join(parts, "&")
	if hasFrag {
		out += "#" + frag
	}
	return out
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// secretParam reports whether a query parameter looks like it carries a
// secret: passcode, password, secret, token and the like, but not the
// name of a file or variable holding one (passcode_file, passcode_env).
func secretParam(name string) bool {
	n, err := url.PathUnescape(name)
	if err != nil {
		n = name
	}
	n = strings.ToLower(n)
	if strings.HasSuffix(n, "_file") || strings.HasSuffix(n, "_env") {
		return false
	}
	for _, w := range []string{"pass", "secret", "token", "credential", "apikey", "api_key", "auth"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}
