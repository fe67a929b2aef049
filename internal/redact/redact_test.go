package redact

import (
	"net/url"
	"strings"
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

// Ensure Line and Words hide the credentials a command line passes and
// leave everything else as it was, spacing included.
func TestLine(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/usr/local/bin/handle-order --verbose", "/usr/local/bin/handle-order --verbose"},
		{"sort -u | uniq -c  >  /tmp/out", "sort -u | uniq -c  >  /tmp/out"},
		{"curl -s https://deploy:pw@h/x | logger", "curl -s https://deploy:xxxxx@h/x | logger"},
		{`curl -H 'Authorization: Bearer t0k' -H "Content-Type: text/plain" https://h/`, `curl -H 'Authorization: xxxxx xxxxx' -H "Content-Type: text/plain" https://h/`},
		{"curl -u deploy:pw --user=me https://h/", "curl -u deploy:xxxxx --user=me https://h/"},
		{"curl --user=deploy:pw https://h/", "curl --user=deploy:xxxxx https://h/"},
		{"API_TOKEN=t0k MODE=fast tool --password pw --token=t0k --passcode_file /etc/p", "API_TOKEN=xxxxx MODE=fast tool --password xxxxx --token=xxxxx --passcode_file /etc/p"},
	}
	for _, tc := range tests {
		if got := Line(tc.in); got != tc.want {
			t.Errorf("Line(%q)\n = %q\nwant %q", tc.in, got, tc.want)
		}
	}
	words := Words([]string{"curl", "-H", "X-Api-Key: k3y", "--data", "@-", "--password", "pw", "https://h/?token=t"})
	want := []string{"curl", "-H", "X-Api-Key: xxxxx", "--data", "@-", "--password", "xxxxx", "https://h/?token=xxxxx"}
	if strings.Join(words, "|") != strings.Join(want, "|") {
		t.Errorf("Words = %q, want %q", words, want)
	}
}
