package main

import "strings"

// splitter cuts input into whole SQL statements: a statement ends at a
// semicolon outside quotes, identifiers and comments, except inside the
// BEGIN … END body of CREATE TRIGGER, which ends at an END that follows a
// semicolon ("…; END;": an END of CASE … END does not end it), as
// sqlite3_complete has it.
type splitter struct {
	buf strings.Builder
}

// add appends a line and returns the statements it completed.
func (s *splitter) add(line string) []string {
	s.buf.WriteString(line)
	s.buf.WriteByte('\n')
	text := s.buf.String()
	var out []string
	start := 0
	for {
		end := statementEnd(text[start:])
		if end < 0 {
			break
		}
		if stmt := strings.TrimSpace(text[start : start+end]); stmt != "" && stmt != ";" {
			out = append(out, stmt)
		}
		start += end
	}
	rest := text[start:]
	s.buf.Reset()
	if !onlyComments(rest) {
		s.buf.WriteString(rest)
	}
	return out
}

// onlyComments reports whether s holds nothing but spaces and finished
// comments: nothing to run.
func onlyComments(s string) bool {
	for {
		s = strings.TrimLeft(s, " \t\r\n")
		switch {
		case s == "":
			return true
		case strings.HasPrefix(s, "--"):
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				return false
			}
			s = s[i:]
		case strings.HasPrefix(s, "/*"):
			i := strings.Index(s[2:], "*/")
			if i < 0 {
				return false
			}
			s = s[i+4:]
		default:
			return false
		}
	}
}

// line takes a line of input: a dot command (outside a statement), or a
// part of SQL; it returns what is whole to run.
func (s *splitter) line(line string) []string {
	if !s.pending() && strings.HasPrefix(strings.TrimSpace(line), ".") {
		return []string{strings.TrimSpace(line)}
	}
	return s.add(line)
}

// rest returns, at the end of input, an unfinished statement to run as it
// is (SQLite then says what it lacks).
func (s *splitter) rest() []string {
	if !s.pending() {
		return nil
	}
	defer s.reset()
	return []string{strings.TrimSpace(s.buf.String())}
}

// pending reports whether an unfinished statement is buffered.
func (s *splitter) pending() bool { return s.buf.Len() > 0 }

func (s *splitter) reset() { s.buf.Reset() }

// statementEnd returns the length of the first complete statement of
// text, its semicolon included, or -1.
func statementEnd(text string) int {
	var words []string   // the statement's first words
	prev, last := "", "" // its last two tokens
	token := func(t string) { prev, last = last, t }
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case c == '\'' || c == '"' || c == '`' || c == '[':
			closer := c
			if c == '[' {
				closer = ']'
			}
			j := strings.IndexByte(text[i+1:], closer)
			if j < 0 {
				return -1
			}
			i += j + 1
			token("'")
		case c == '-' && i+1 < len(text) && text[i+1] == '-':
			j := strings.IndexByte(text[i:], '\n')
			if j < 0 {
				return -1
			}
			i += j
		case c == '/' && i+1 < len(text) && text[i+1] == '*':
			j := strings.Index(text[i+2:], "*/")
			if j < 0 {
				return -1
			}
			i += j + 3
		case c == ';':
			if isTrigger(words) && !(last == "END" && prev == ";") {
				token(";")
				continue
			}
			return i + 1
		case isWordByte(c):
			j := i
			for j < len(text) && isWordByte(text[j]) {
				j++
			}
			w := strings.ToUpper(text[i:j])
			if len(words) < 6 {
				words = append(words, w)
			}
			token(w)
			i = j - 1
		default:
			if c > ' ' {
				token(string(c))
			}
		}
	}
	return -1
}

func isWordByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

// isTrigger reports whether a statement's first words create a trigger
// (perhaps EXPLAINed).
func isTrigger(words []string) bool {
	if len(words) > 0 && words[0] == "EXPLAIN" {
		words = words[1:]
		if len(words) > 1 && words[0] == "QUERY" && words[1] == "PLAN" {
			words = words[2:]
		}
	}
	if len(words) < 2 || words[0] != "CREATE" {
		return false
	}
	if words[1] == "TRIGGER" {
		return true
	}
	return len(words) > 2 && (words[1] == "TEMP" || words[1] == "TEMPORARY") && words[2] == "TRIGGER"
}
