// Package metric declares item keys: description and named parameters that are validated and
// defaulted before a handler sees them, so every handler gets a map of clean values.
package metric

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Validator checks one parameter value.
type Validator interface {
	Validate(value string) error
}

// SetValidator accepts one of a fixed set of words.
type SetValidator struct {
	Set             []string
	CaseInsensitive bool
}

// Validate implements Validator.
func (v SetValidator) Validate(value string) error {
	for _, s := range v.Set {
		if s == value || (v.CaseInsensitive && strings.EqualFold(s, value)) {
			return nil
		}
	}
	return fmt.Errorf("must be one of %s", strings.Join(v.Set, ", "))
}

// NumberValidator accepts an integer within [Min, Max].
type NumberValidator struct {
	Min, Max int64
}

// Validate implements Validator.
func (v NumberValidator) Validate(value string) error {
	n, err := strconv.ParseInt(value, 10, 64)
	if err != nil {
		return fmt.Errorf("must be an integer")
	}
	if n < v.Min || n > v.Max {
		return fmt.Errorf("must be between %d and %d", v.Min, v.Max)
	}
	return nil
}

// PatternValidator accepts values matching a regular expression.
type PatternValidator struct {
	Pattern *regexp.Regexp
	Hint    string // said in the error instead of the raw pattern
}

// Validate implements Validator.
func (v PatternValidator) Validate(value string) error {
	if !v.Pattern.MatchString(value) {
		if v.Hint != "" {
			return fmt.Errorf("must be %s", v.Hint)
		}
		return fmt.Errorf("must match %s", v.Pattern)
	}
	return nil
}

// Param is one positional parameter of a key.
type Param struct {
	name        string
	description string
	required    bool
	def         *string
	validator   Validator
}

// NewParam declares a parameter; it is optional with an empty default until said otherwise.
func NewParam(name, description string) *Param {
	return &Param{name: name, description: description}
}

// SetRequired makes an empty or missing value an error.
func (p *Param) SetRequired() *Param { p.required = true; return p }

// WithDefault gives the value used when the parameter is missing or empty.
func (p *Param) WithDefault(v string) *Param { p.def = &v; return p }

// WithValidator checks non-empty values.
func (p *Param) WithValidator(v Validator) *Param { p.validator = v; return p }

// Name returns the parameter's name.
func (p *Param) Name() string { return p.name }

// Description returns the parameter's description.
func (p *Param) Description() string { return p.description }

// Required reports whether the parameter must be given.
func (p *Param) Required() bool { return p.required }

// Default returns the default value and whether there is one.
func (p *Param) Default() (string, bool) {
	if p.def == nil {
		return "", false
	}
	return *p.def, true
}

// Metric is one key's declaration.
type Metric struct {
	Description string
	Params      []*Param
	varParam    bool
}

// New declares a key. With varParam, extra parameters beyond the declared ones are passed through
// (as "#N" for the N-th, 1-based) instead of being an error.
func New(description string, params []*Param, varParam bool) *Metric {
	return &Metric{Description: description, Params: params, varParam: varParam}
}

// Usage renders the key with its parameter names, e.g. kvm.domain.state[<Domain>].
func (m *Metric) Usage(key string) string {
	if len(m.Params) == 0 {
		return key
	}
	names := make([]string, len(m.Params))
	for i, p := range m.Params {
		if p.required {
			names[i] = "<" + p.name + ">"
		} else {
			names[i] = "[" + p.name + "]"
		}
	}
	if m.varParam {
		names = append(names, "...")
	}
	return key + "[" + strings.Join(names, ",") + "]"
}

// EvalParams maps positional values to names, applies defaults and validators. Errors name the
// parameter and the reason; the caller prefixes the key.
func (m *Metric) EvalParams(raw []string) (map[string]string, error) {
	// the agent sends [""] for "key[]": that means no parameters
	if len(raw) == 1 && raw[0] == "" {
		raw = nil
	}
	if len(raw) > len(m.Params) && !m.varParam {
		return nil, fmt.Errorf("too many parameters: got %d, the key takes at most %d", len(raw), len(m.Params))
	}
	out := make(map[string]string, len(m.Params))
	for i, p := range m.Params {
		v := ""
		if i < len(raw) {
			v = raw[i]
		}
		if v == "" {
			if p.required {
				return nil, fmt.Errorf("missing parameter %s (%s)", p.name, p.description)
			}
			if p.def != nil {
				v = *p.def
			}
		} else if p.validator != nil {
			if err := p.validator.Validate(v); err != nil {
				return nil, fmt.Errorf("invalid parameter %s %q: %w", p.name, v, err)
			}
		}
		out[p.name] = v
	}
	for i := len(m.Params); i < len(raw); i++ {
		out["#"+strconv.Itoa(i+1)] = raw[i]
	}
	return out, nil
}

// MetricSet maps keys to declarations.
type MetricSet map[string]*Metric

// List returns key, metric pairs in the form plugin.RegisterMetrics takes.
func (ms MetricSet) List() []any {
	out := make([]any, 0, 2*len(ms))
	for k, m := range ms {
		out = append(out, k, m)
	}
	return out
}
