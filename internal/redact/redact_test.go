package redact

import (
	"net/url"
	"testing"
)

// Ensure ParseError hides every quoted piece of url.Parse's errors that
// overlaps the password, and keeps the pieces that do not.
func TestParseError(t *testing.T) {
	tests := []struct{ raw, want string }{
		{"stomp://u:s3cr3t/x@h:61613/q", `parse "stomp://u:xxxxx@h:61613/q": invalid port "xxxxx" after host`},
		{"stomp://u:s3cr3t#x@h:61613/q", `parse "stomp://u:xxxxx@h:61613/q": invalid port "xxxxx" after host`},
		{"stomp://u:pw%zz@h/q", `parse "stomp://u:xxxxx@h/q": invalid URL escape "xxxxx"`},
		// Nothing of the password in what is quoted: kept as it is.
		{"stomp://u:pw@h:port/q", `parse "stomp://u:xxxxx@h:port/q": invalid port ":port" after host`},
		{"stomp://u@h/%zz", `parse "stomp://u@h/%zz": invalid URL escape "%zz"`},
	}
	for _, tc := range tests {
		_, err := url.Parse(tc.raw)
		if err == nil {
			t.Fatalf("url.Parse(%q) succeeded", tc.raw)
		}
		if got := ParseError(err.Error(), tc.raw); got != tc.want {
			t.Errorf("ParseError(%q) = %q, want %q", err, got, tc.want)
		}
	}
}
