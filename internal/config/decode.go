// Decoding into Config: strict durations, and decode errors and unknown keys
// reported one "config: key: problem" line each.

package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/v2"
)

// decoderConfig is koanf's default decoding plus strict durations and the
// unused-key report.
func decoderConfig(meta *mapstructure.Metadata) *mapstructure.DecoderConfig {
	return &mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			durationHook,
			listHook,
			mapstructure.TextUnmarshallerHookFunc(),
		),
		WeaklyTypedInput: true,
		Metadata:         meta,
		TagName:          "koanf",
	}
}

var durationType = reflect.TypeFor[time.Duration]()

// durationHook parses "30s"-style durations and refuses bare numbers other
// than 0: "acquire_timeout: 30" would otherwise mean 30 nanoseconds.
func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != durationType || from == durationType {
		return data, nil
	}
	switch v := reflect.ValueOf(data); v.Kind() {
	case reflect.String:
		s := strings.TrimSpace(v.String())
		if s == "0" {
			return time.Duration(0), nil
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("invalid duration %q: write it with a unit, e.g. \"30s\", \"500ms\" or \"1h\"", s)
		}
		return d, nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		if v.IsZero() {
			return time.Duration(0), nil
		}
		return nil, fmt.Errorf("duration %v has no unit: write it as e.g. \"%vs\"", data, data)
	}
	return data, nil
}

// decodeError rewrites mapstructure's errors as "config: key: problem",
// one line per bad key.
func decodeError(err error) error {
	var lines []string
	var walk func(error)
	walk = func(e error) {
		var de *mapstructure.DecodeError
		if errors.As(e, &de) && de == e {
			inner := de.Unwrap()
			if joined, ok := inner.(interface{ Unwrap() []error }); ok {
				for _, c := range joined.Unwrap() {
					walk(c)
				}
				return
			}
			if _, ok := inner.(*mapstructure.DecodeError); ok {
				walk(inner)
				return
			}
			lines = append(lines, fmt.Sprintf("config: %s: %v", keyName(de.Name()), innerMessage(inner)))
			return
		}
		if joined, ok := e.(interface{ Unwrap() []error }); ok {
			for _, c := range joined.Unwrap() {
				walk(c)
			}
			return
		}
		if wrapped := errors.Unwrap(e); wrapped != nil {
			walk(wrapped)
			return
		}
		lines = append(lines, "config: "+e.Error())
	}
	walk(err)
	slices.Sort(lines)
	if len(lines) == 0 {
		return fmt.Errorf("config: %w", err)
	}
	return errors.New(strings.Join(lines, "\n"))
}

// mapIndex matches mapstructure's spelling of a map entry, databases[r].
var mapIndex = regexp.MustCompile(`\[([^\]]*[^0-9\]][^\]]*)\]`)

// keyName spells a decoder path the way config keys are written:
// databases[r].url becomes databases.r.url; list indexes stay as [0].
func keyName(path string) string {
	return mapIndex.ReplaceAllString(path, ".$1")
}

// innerMessage drops mapstructure's type names where a hook already said
// what is wrong in the user's words.
func innerMessage(err error) string {
	var pe *mapstructure.ParseError
	if errors.As(err, &pe) {
		return fmt.Sprintf("cannot use %q: want %s", fmt.Sprint(pe.Value), kindWord(pe.Expected.Type()))
	}
	var ue *mapstructure.UnconvertibleTypeError
	if errors.As(err, &ue) {
		return fmt.Sprintf("cannot use %v: want %s", ue.Value, kindWord(ue.Expected.Type()))
	}
	return err.Error()
}

// kindWord names a Go type the way a config file author thinks of it.
func kindWord(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a section of keys"
	}
	return t.String()
}

// unknownKeys rejects keys that match no option, saying where each came
// from: a typo must not be silently ignored.
func unknownKeys(unused []string, path string, fileKeys, envKeys *koanf.Koanf) error {
	if len(unused) == 0 {
		return nil
	}
	lines := make([]string, 0, len(unused))
	for _, key := range unused {
		key = keyName(key)
		where := ""
		switch {
		case envKeys.Exists(key):
			where = " (set by " + envName(key) + ")"
		case fileKeys != nil && fileKeys.Exists(key):
			where = " (in " + path + ")"
		}
		lines = append(lines, fmt.Sprintf("config: %s: unknown option%s", key, where))
	}
	slices.Sort(lines)
	return errors.New(strings.Join(lines, "\n"))
}

// prefixLines replaces prefix old with new at the start of every line.
func prefixLines(s, old, new string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if rest, ok := strings.CutPrefix(l, old); ok {
			lines[i] = new + rest
		}
	}
	return strings.Join(lines, "\n")
}
