// Keeping passwords out of output: connection strings redacted for logs and
// errors (RedactURL), and passwords scrubbed from libraries' error text.

package config

import (
	"net/url"
	"regexp"
	"strings"
)

// Redacted replaces every password the program might otherwise print.
const Redacted = "xxxxx"

var (
	// urlUserinfo finds user:password@ even in a URL url.Parse rejects. It
	// runs to the last '@': an unescaped '@' in a password must not cut the
	// match short and leave the rest of the password visible.
	urlUserinfo = regexp.MustCompile(`^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@?#]*:)(.*)@`)
	// kvQuoted and kvPlain find password=... in key=value connection strings.
	kvQuoted = regexp.MustCompile(`(password\s*=\s*)'((?:[^'\\]|\\.)*)'`)
	kvPlain  = regexp.MustCompile(`(password\s*=\s*)([^\s']\S*)`)
)

// RedactURL returns a connection string fit for logs and errors: the
// password, in the userinfo or as a password= parameter, is replaced.
func RedactURL(raw string) string {
	if strings.Contains(raw, "://") {
		u, err := url.Parse(raw)
		if err != nil {
			return urlUserinfo.ReplaceAllString(raw, "${1}"+Redacted+"@")
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), Redacted)
		}
		if q := u.Query(); q.Has("password") {
			q.Set("password", Redacted)
			u.RawQuery = q.Encode()
		}
		// url.String escapes nothing in "xxxxx", so the result reads as written.
		return u.String()
	}
	out := kvQuoted.ReplaceAllString(raw, "${1}'"+Redacted+"'")
	return kvPlain.ReplaceAllString(out, "${1}"+Redacted)
}

// scrubSecrets removes from text every password found in the connection
// string raw, in each spelling a parser might echo back (escaped or not).
// It guards error messages from libraries that quote their input.
func scrubSecrets(text, raw string) string {
	for _, pw := range passwordsIn(raw) {
		for _, form := range []string{pw, url.PathEscape(pw), url.QueryEscape(pw), url.UserPassword("", pw).String()[1:]} {
			if form != "" {
				text = strings.ReplaceAll(text, form, Redacted)
			}
		}
	}
	return text
}

// passwordsIn lists the password spellings present in a connection string.
func passwordsIn(raw string) []string {
	var out []string
	add := func(s string) {
		if s != "" {
			out = append(out, s)
			if un, err := url.PathUnescape(s); err == nil && un != s {
				out = append(out, un)
			}
		}
	}
	if u, err := url.Parse(raw); err == nil {
		if pw, ok := u.User.Password(); ok {
			add(pw)
		}
		add(u.Query().Get("password"))
	}
	if m := urlUserinfo.FindStringSubmatch(raw); m != nil {
		add(m[2])
	}
	for _, m := range kvQuoted.FindAllStringSubmatch(raw, -1) {
		add(m[2])
	}
	for _, m := range kvPlain.FindAllStringSubmatch(raw, -1) {
		add(m[2])
	}
	return out
}
