package qmp

import (
	"encoding/json"
	"fmt"
)

// framer splits a client's byte stream into top-level JSON values the way
// QEMU's streamer does: an object may span lines; bare words between
// values are reported one by one; a value larger than max is dropped with
// an error and input is skipped to the next newline, so no line can make
// the server hold unbounded memory.
type framer struct {
	max      int
	buf      []byte
	word     []byte
	depth    int
	inStr    bool
	esc      bool
	topStr   bool
	skipping bool
}

// frame is one result of feeding input: a complete value or an error.
type frame struct {
	value []byte
	err   string
}

func (f *framer) reset() {
	f.buf, f.word, f.depth, f.inStr, f.esc, f.topStr = f.buf[:0], f.word[:0], 0, false, false, false
}

func (f *framer) flushWord(out []frame) []frame {
	if len(f.word) == 0 {
		return out
	}
	w := string(f.word)
	f.word = f.word[:0]
	var v any
	if json.Unmarshal([]byte(w), &v) == nil {
		return append(out, frame{err: "QMP input must be a JSON object"})
	}
	return append(out, frame{err: fmt.Sprintf("JSON parse error, invalid keyword '%s'", w)})
}

func (f *framer) tooLarge(out []frame) []frame {
	f.reset()
	f.skipping = true
	return append(out, frame{err: fmt.Sprintf("JSON parse error, input exceeds the %d byte limit", f.max)})
}

// feed consumes input and returns the frames it completes.
func (f *framer) feed(p []byte) []frame {
	var out []frame
	for _, c := range p {
		if f.skipping {
			if c == '\n' {
				f.skipping = false
			}
			continue
		}
		if f.depth == 0 && !f.topStr {
			switch c {
			case ' ', '\t', '\r', '\n':
				out = f.flushWord(out)
			case '{', '[':
				out = f.flushWord(out)
				f.depth = 1
				f.buf = append(f.buf[:0], c)
			case '}', ']':
				out = f.flushWord(out)
				out = append(out, frame{err: "JSON parse error, expecting value"})
			case '"':
				out = f.flushWord(out)
				f.topStr, f.inStr = true, true
				f.buf = append(f.buf[:0], c)
			default:
				f.word = append(f.word, c)
				if len(f.word) > f.max {
					out = f.tooLarge(out)
				}
			}
			continue
		}
		f.buf = append(f.buf, c)
		if len(f.buf) > f.max {
			out = f.tooLarge(out)
			continue
		}
		switch {
		case f.inStr && f.esc:
			f.esc = false
		case f.inStr && c == '\\':
			f.esc = true
		case f.inStr && c == '"':
			f.inStr = false
			if f.topStr {
				f.topStr = false
				f.reset()
				out = append(out, frame{err: "QMP input must be a JSON object"})
			}
		case f.inStr:
		case c == '"':
			f.inStr = true
		case c == '{' || c == '[':
			f.depth++
			if f.depth > 1024 {
				out = f.tooLarge(out)
			}
		case c == '}' || c == ']':
			f.depth--
			if f.depth == 0 {
				out = append(out, frame{value: append([]byte(nil), f.buf...)})
				f.reset()
			}
		}
	}
	return out
}
