package main

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
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
