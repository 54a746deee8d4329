package config

import "log/slog"

// demoYAML is what herd serves when started without --config: one model group answered
// locally, so a first `curl` works with no upstream account. The rpm limits are low enough to
// see a 429 by hand.
const demoYAML = `
model_list:
  - model_name: demo-model
    litellm_params:
      model: mock/demo-a
      mock_response: "Hello from herd (demo deployment A)."
      rpm: 60
    model_info:
      id: demo-a
  - model_name: demo-model
    litellm_params:
      model: mock/demo-b
      mock_response: "Hello from herd (demo deployment B)."
      rpm: 30
    model_info:
      id: demo-b
`

// DemoSource is the demo config's YAML, for Split.
func DemoSource() []byte { return []byte(demoYAML) }

// Demo returns the built-in demo config. It goes through Parse like any file, so it is held to
// the same validation; it reads no environment. A fresh Config is returned on every call.
func Demo() *Config {
	cfg, err := Parse("", []byte(demoYAML), MapEnv{}, slog.New(slog.DiscardHandler))
	if err != nil {
		panic("config: built-in demo config is invalid: " + err.Error())
	}
	return cfg
}
