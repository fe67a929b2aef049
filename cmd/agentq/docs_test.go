package main

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/agentq/agentq/ingest"
)

// configKeys returns the YAML keys of t's fields, nested structs and
// lists of structs included.
func configKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		keys = append(keys, name)
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft.PkgPath() == t.PkgPath() {
			keys = append(keys, configKeys(ft)...)
		}
	}
	return keys
}

// Ensure every config key is taught where the docs say: in run --help
// (whose readers may have no source tree), and commented in
// testdata/agentq.example.yaml ("every key is commented", says the
// README). max_size, retry and the route keys were in the example only.
func TestConfigKeysTaught(t *testing.T) {
	code, help, _ := runMain(t, "", "run", "--help")
	if code != 0 {
		t.Fatalf("run --help exited %d", code)
	}
	example, err := os.ReadFile("../../testdata/agentq.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	keys := configKeys(reflect.TypeOf(Config{}))
	if len(keys) < 30 {
		t.Fatalf("found only %d config keys: %v", len(keys), keys)
	}
	for _, k := range keys {
		if !regexp.MustCompile(`(^|[^a-z_.])`+k+`([^a-z_]|$)`).MatchString(configHelp) || !strings.Contains(help, configHelp[:40]) {
			t.Errorf("run --help does not teach the config key %s", k)
		}
		if !regexp.MustCompile(`(?m)^[ #-]*` + k + `:`).Match(example) {
			t.Errorf("testdata/agentq.example.yaml has no %s:", k)
		}
	}
}

// Ensure the URLs the README and the example config show parse as the
// sources or answer targets they stand for: a renamed parameter or
// scheme would leave them failing where a newcomer copies them from.
func TestDocumentedURLsParse(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const uuid = "0f0e0d0c-0b0a-4908-8706-050403020100"
	var urls []string
	for _, m := range regexp.MustCompile("`'?([a-z+]+://[^`' ]*[^`' /])'?`").FindAllStringSubmatch(string(readme), -1) {
		u := m[1]
		if strings.Contains(u, "…") || strings.HasPrefix(u, "http") {
			continue // a form's tail left out; the dashboard's address
		}
		urls = append(urls, strings.ReplaceAll(u, "=UUID", "="+uuid))
	}
	// The README's command lines: the URL in quotes after --source,
	// --results.
	for _, m := range regexp.MustCompile(`--(source|results) '([^']+)'`).FindAllStringSubmatch(string(readme), -1) {
		urls = append(urls, m[2])
	}
	if len(urls) < 10 {
		t.Fatalf("found only %d URLs in the README: %q", len(urls), urls)
	}
	cfg, err := LoadConfig("../../testdata/agentq.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("AGENTQ_PASSCODE", "p") // the example's passcode_env
	for _, s := range cfg.Sources {
		if _, err := ingest.ParseURL(s.URL); err != nil {
			t.Errorf("agentq.example.yaml source %s: %v", s.URL, err)
		}
	}
	for _, r := range cfg.Routes {
		for _, u := range []string{r.Results, r.OnStuck} {
			if u == "" {
				continue
			}
			if _, err := ingest.ParseTarget(u); err != nil {
				t.Errorf("agentq.example.yaml route %s: %s: %v", r.Match, u, err)
			}
		}
	}
	for _, u := range urls {
		_, srcErr := ingest.ParseURL(u)
		_, targetErr := ingest.ParseTarget(u)
		if srcErr != nil && targetErr != nil {
			t.Errorf("README's %s parses as neither a source (%v) nor an answer target (%v)", u, srcErr, targetErr)
		}
	}
}
