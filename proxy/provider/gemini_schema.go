package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/tidwall/gjson"
)

// geminiSchema turns an OpenAI (JSON Schema) tool or response schema into the OpenAPI subset
// Google's Schema accepts, as LiteLLM does: $ref is resolved against $defs/definitions, a null
// alternative (anyOf, or a type list) becomes nullable, oneOf is read as anyOf, allOf is merged,
// const becomes a one-value enum, types are upper-cased, and keys Google refuses
// (additionalProperties, $schema, $id, strict, examples, exclusive bounds, ...) are dropped, as
// are enums of non-strings and formats Google does not know. order adds propertyOrdering, the
// properties' order as written, which Google needs to keep a response's keys in that order.
func geminiSchema(r gjson.Result, order bool) (json.RawMessage, error) {
	s := schemaConverter{root: r, order: order}
	o, err := s.convert(r, 0)
	if err != nil {
		return nil, err
	}
	return json.Marshal(o)
}

type schemaConverter struct {
	root  gjson.Result
	order bool
}

// schemaMaxDepth bounds nesting, and so recursive $refs.
const schemaMaxDepth = 32

// schemaKept are the keys copied as they are.
var schemaKept = []string{"description", "title", "nullable", "default", "example", "pattern",
	"minimum", "maximum", "minItems", "maxItems", "minLength", "maxLength", "minProperties",
	"maxProperties", "propertyOrdering"}

// schemaFormats are the formats Google accepts, by type.
var schemaFormats = map[string][]string{
	"STRING":  {"enum", "date-time"},
	"NUMBER":  {"float", "double"},
	"INTEGER": {"int32", "int64"},
}

func (s *schemaConverter) convert(r gjson.Result, depth int) (*orderedJSON, error) {
	if depth > schemaMaxDepth {
		return nil, fmt.Errorf("it is nested more than %d levels deep (or its $refs recurse)", schemaMaxDepth)
	}
	out := &orderedJSON{}
	if !r.IsObject() {
		return out, nil // true, or an empty schema: anything
	}
	if ref := r.Get(`\$ref`); ref.Exists() {
		target, err := s.resolve(ref.Str)
		if err != nil {
			return nil, err
		}
		if out, err = s.convert(target, depth+1); err != nil {
			return nil, err
		}
	}
	var typ string
	nullable := false
	var err error
	r.ForEach(func(k, v gjson.Result) bool {
		switch key := k.Str; key {
		case "type":
			types := []string{v.Str}
			if v.IsArray() {
				types = nil
				for _, t := range v.Array() {
					types = append(types, t.Str)
				}
			}
			var kept []string
			for _, t := range types {
				if t == "null" && len(types) > 1 {
					nullable = true
					continue
				}
				kept = append(kept, strings.ToUpper(t))
			}
			switch len(kept) {
			case 0:
			case 1:
				typ = kept[0]
				out.set("type", kept[0])
			default:
				var alts []any
				for _, t := range kept {
					alts = append(alts, (&orderedJSON{}).set("type", t))
				}
				out.set("anyOf", alts)
			}
		case "anyOf", "oneOf":
			var alts []any
			for _, a := range v.Array() {
				if a.Get("type").Str == "null" && len(a.Map()) == 1 {
					nullable = true
					continue
				}
				var c *orderedJSON
				if c, err = s.convert(a, depth+1); err != nil {
					return false
				}
				alts = append(alts, c)
			}
			if len(alts) == 1 {
				out.merge(alts[0].(*orderedJSON))
			} else if len(alts) > 1 {
				out.set("anyOf", alts)
			}
		case "allOf":
			for _, a := range v.Array() {
				var c *orderedJSON
				if c, err = s.convert(a, depth+1); err != nil {
					return false
				}
				out.merge(c)
			}
		case "properties":
			props := &orderedJSON{}
			var names []any
			v.ForEach(func(name, p gjson.Result) bool {
				var c *orderedJSON
				if c, err = s.convert(p, depth+1); err != nil {
					return false
				}
				props.set(name.Str, c)
				names = append(names, name.Str)
				return true
			})
			if err != nil {
				return false
			}
			out.set("properties", props)
			if s.order && len(names) > 1 && !r.Get("propertyOrdering").Exists() {
				out.set("propertyOrdering", names)
			}
		case "items":
			if v.IsObject() {
				var c *orderedJSON
				if c, err = s.convert(v, depth+1); err != nil {
					return false
				}
				out.set("items", c)
			}
		case "required":
			props := r.Get("properties")
			var names []any
			for _, n := range v.Array() {
				if !props.Exists() || props.Get(gjsonEscape(n.Str)).Exists() {
					names = append(names, n.Str)
				}
			}
			if len(names) > 0 {
				out.set("required", names)
			}
		case "enum":
			var vals []any
			for _, e := range v.Array() {
				if e.Type != gjson.String {
					return true // Google's enums are strings only: dropped
				}
				vals = append(vals, e.Str)
			}
			out.set("enum", vals)
		case "const":
			if v.Type == gjson.String {
				out.set("enum", []any{v.Str})
			}
		default:
			if slices.Contains(schemaKept, key) {
				out.set(key, json.RawMessage(v.Raw))
			}
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	if f := r.Get("format").Str; f != "" && slices.Contains(schemaFormats[typ], f) {
		out.set("format", f)
	}
	if nullable {
		out.set("nullable", true)
	}
	if _, ok := out.get("type"); !ok {
		switch {
		case out.has("properties"):
			out.set("type", "OBJECT")
		case out.has("items"):
			out.set("type", "ARRAY")
		case out.has("enum"):
			out.set("type", "STRING")
		}
	}
	return out, nil
}

// resolve finds a local $ref: #/$defs/Name or #/definitions/Name.
func (s *schemaConverter) resolve(ref string) (gjson.Result, error) {
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return gjson.Result{}, errors.New("$ref " + quote(ref) + " is not local (#/$defs/...)")
	}
	var keys []string
	for _, k := range strings.Split(p, "/") {
		k = strings.ReplaceAll(strings.ReplaceAll(k, "~1", "/"), "~0", "~")
		keys = append(keys, gjsonEscape(k))
	}
	t := s.root.Get(strings.Join(keys, "."))
	if !t.IsObject() {
		return gjson.Result{}, errors.New("$ref " + quote(ref) + " names no schema")
	}
	return t, nil
}

// gjsonEscape escapes a key for a gjson path.
func gjsonEscape(k string) string {
	var b strings.Builder
	for _, c := range k {
		if strings.ContainsRune(`.*?|#@\!=<>%$`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// orderedJSON is a JSON object that keeps its keys in the order set.
type orderedJSON struct {
	keys []string
	vals []any
}

func (o *orderedJSON) set(k string, v any) *orderedJSON {
	for i, have := range o.keys {
		if have == k {
			o.vals[i] = v
			return o
		}
	}
	o.keys = append(o.keys, k)
	o.vals = append(o.vals, v)
	return o
}

func (o *orderedJSON) get(k string) (any, bool) {
	for i, have := range o.keys {
		if have == k {
			return o.vals[i], true
		}
	}
	return nil, false
}

func (o *orderedJSON) has(k string) bool { _, ok := o.get(k); return ok }

// merge sets o's keys from m that o lacks.
func (o *orderedJSON) merge(m *orderedJSON) {
	for i, k := range m.keys {
		if !o.has(k) {
			o.set(k, m.vals[i])
		}
	}
}

func (o *orderedJSON) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		b.Write(kb)
		b.WriteByte(':')
		vb, err := json.Marshal(o.vals[i])
		if err != nil {
			return nil, err
		}
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}
