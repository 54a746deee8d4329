package config

import (
	"strconv"
	"strings"
)

// Error is one reason a config file was rejected. Parse and Load return either a single *Error
// or several joined with errors.Join (in file order), so a user fixes every problem in one pass.
// Error text names the file, line and key but never a secret's value.
type Error struct {
	File   string // path as given to Load or Parse; "" for the built-in demo or a runtime change
	Line   int    // 1-based line of the offending key; 0 when unknown
	Key    string // key path such as model_list[0].litellm_params.rpm; "" for file-level problems
	Reason string // what is wrong, e.g. "must not be negative (got -5)"
	Err    error  // underlying error, if any (e.g. fs.ErrNotExist from Load); for errors.Is
}

// Error formats as "<file>:<line>: <key>: <reason>", leaving out the parts that are unknown.
func (e *Error) Error() string {
	var b strings.Builder
	switch {
	case e.File != "" && e.Line > 0:
		b.WriteString(e.File + ":" + strconv.Itoa(e.Line) + ": ")
	case e.File != "":
		b.WriteString(e.File + ": ")
	case e.Line > 0:
		b.WriteString("line " + strconv.Itoa(e.Line) + ": ")
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// Unwrap returns the underlying error, if any.
func (e *Error) Unwrap() error { return e.Err }
