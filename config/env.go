package config

import (
	"errors"
	"os"
)

// Env is where os.environ/NAME references and provider fallbacks (AZURE_API_KEY, ...) are
// looked up, and where environment_variables are written. It is an interface so tests and the
// fuzzer can parse configs without touching the process environment.
type Env interface {
	Lookup(name string) (string, bool)
	Set(name, value string) error
}

// OSEnv is the real process environment; Load uses it.
type OSEnv struct{}

// Lookup reads the process environment.
func (OSEnv) Lookup(name string) (string, bool) { return os.LookupEnv(name) }

// Set writes the process environment, as LiteLLM does for environment_variables, so code
// outside config that reads the environment sees the same values.
func (OSEnv) Set(name, value string) error { return os.Setenv(name, value) }

// MapEnv is an in-memory environment for tests. Set writes into the map, so a test can see
// what environment_variables applied.
type MapEnv map[string]string

// Lookup reads the map.
func (m MapEnv) Lookup(name string) (string, bool) {
	v, ok := m[name]
	return v, ok
}

// Set writes the map. It fails on a nil map rather than panicking.
func (m MapEnv) Set(name, value string) error {
	if m == nil {
		return errors.New("MapEnv is nil")
	}
	if name == "" {
		return errors.New("empty variable name")
	}
	m[name] = value
	return nil
}

var (
	_ Env = OSEnv{}
	_ Env = MapEnv(nil)
)
