package driver

import (
	"strings"
	"sync"
)

// sessionPragmas are the connection settings that change what a write
// does. One that a connection sets outside a transaction is set again on
// each session through which it sends statements to the leader, so that
// they run there as they would here.
var sessionPragmas = map[string]bool{
	"foreign_keys": true, "defer_foreign_keys": true, "recursive_triggers": true,
	"case_sensitive_like": true, "ignore_check_constraints": true, "legacy_alter_table": true,
	"query_only": true, "trusted_schema": true, "reverse_unordered_selects": true,
	"automatic_index": true, "temp_store": true, "cell_size_check": true,
}

// settingOf returns the name of the connection setting that statement sql
// makes ("PRAGMA name = value" or "PRAGMA name(value)", one of
// sessionPragmas), or "".
func settingOf(sql string) string {
	if firstKeyword(sql) != "PRAGMA" {
		return ""
	}
	rest := strings.TrimLeft(sql, " \t\r\n\f\v;")
	for strings.HasPrefix(rest, "--") || strings.HasPrefix(rest, "/*") {
		if strings.HasPrefix(rest, "--") {
			i := strings.IndexByte(rest, '\n')
			if i < 0 {
				return ""
			}
			rest = strings.TrimSpace(rest[i+1:])
		} else {
			i := strings.Index(rest[2:], "*/")
			if i < 0 {
				return ""
			}
			rest = strings.TrimSpace(rest[i+4:])
		}
	}
	rest = strings.TrimSpace(rest[len("PRAGMA"):])
	end := strings.IndexAny(rest, "=( \t\r\n;")
	if end <= 0 {
		return ""
	}
	name := strings.ToLower(rest[:end])
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		if s := name[:i]; s != "main" && s != "temp" {
			return "" // an attached file's: refused anyway
		}
		name = name[i+1:]
	}
	if after := strings.TrimSpace(rest[end:]); !sessionPragmas[name] || (!strings.HasPrefix(after, "=") && !strings.HasPrefix(after, "(")) {
		return ""
	}
	return name
}

// settings are the connection settings an application made on one
// connection, shared by its forwarding client. version changes with them.
type settings struct {
	mu      sync.Mutex
	byName  map[string]string
	order   []string
	version uint64
}

// note records statement sql if it makes a connection setting.
func (s *settings) note(sql string) {
	name := settingOf(sql)
	if name == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.byName == nil {
		s.byName = map[string]string{}
	}
	if _, ok := s.byName[name]; !ok {
		s.order = append(s.order, name)
	}
	s.byName[name] = strings.TrimSpace(sql)
	s.version++
}

// list returns the statements that make the settings, and their version.
func (s *settings) list() ([]string, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := make([]string, 0, len(s.order))
	for _, name := range s.order {
		l = append(l, s.byName[name])
	}
	return l, s.version
}
