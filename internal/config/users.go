// The login lists' text forms: auth.users and databases.<name>.users as the
// environment spells them, and auth.users_file's lines.

package config

import (
	"bufio"
	"bytes"
	"fmt"
	"reflect"
	"strings"
)

var (
	userListType   = reflect.TypeFor[[]UserConfig]()
	stringListType = reflect.TypeFor[[]string]()
)

// listHook decodes the environment's string forms of the two login lists:
// auth.users as "name:password,name2:password2" and databases.<name>.users
// as "name,name2". An empty string is an empty list.
func listHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String {
		return data, nil
	}
	s := reflect.ValueOf(data).String()
	switch to {
	case userListType:
		return parseUserList(s)
	case stringListType:
		var out []string
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out = append(out, f)
			}
		}
		return out, nil
	}
	return data, nil
}

// parseUserList parses "name:password,name2:password2". Each entry is split
// at its first colon; spaces around an entry are dropped, so a password
// that holds a comma or ends with a space needs auth.users_file (one that
// starts with a space keeps it: nothing after the colon is trimmed).
// Errors never quote an entry: it holds a password.
func parseUserList(s string) ([]UserConfig, error) {
	out := []UserConfig{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for i, entry := range strings.Split(s, ",") {
		name, password, ok := strings.Cut(strings.TrimSpace(entry), ":")
		if !ok {
			return nil, fmt.Errorf("entry %d has no ':': write name:password,name2:password2 "+
				"(a password with a comma goes in auth.users_file)", i+1)
		}
		out = append(out, UserConfig{Name: strings.TrimSpace(name), Password: password})
	}
	return out, nil
}

// readUsersFile reads auth.users_file: one "name:password" a line, split
// at the first colon, the password taken verbatim to the end of the line
// (a trailing CR is dropped). Blank lines and lines starting with '#' are
// skipped. Errors name the line, never its content.
func readUsersFile(path string) ([]UserConfig, error) {
	data, err := readSecretFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: auth.users_file: %w", err)
	}
	out := []UserConfig{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		name, password, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("config: auth.users_file: %s line %d: want name:password", path, n)
		}
		out = append(out, UserConfig{Name: strings.TrimSpace(name), Password: password})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("config: auth.users_file: %s: %w", path, err)
	}
	return out, nil
}
