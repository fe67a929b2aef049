package ingest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/agentq/agentq/internal/redact"
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
const redacted = redact.Placeholder

// RedactURL returns s with its password and any passcode-like query
// parameter hidden, for logs and error messages (see redact.URL). Text
// that is not a URL is returned unchanged.
func RedactURL(s string) string { return redact.URL(s) }
