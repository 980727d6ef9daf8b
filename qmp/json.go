package qmp

import (
	"bytes"
	"encoding/json"
)

// field is one member of an ordered JSON object.
type field struct {
	k string
	v any
}

// obj is a JSON object whose members keep the order QEMU writes them in,
// so replies read like QEMU's (clients must not depend on it, people do).
type obj []field

// MarshalJSON implements json.Marshaler.
func (o obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.k)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(f.v)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// encode writes v the way QEMU does: ", " and ": " separators, one line,
// CRLF-terminated.
func encode(v any) ([]byte, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(raw)+len(raw)/4+2)
	inStr, esc := false, false
	for _, c := range raw {
		out = append(out, c)
		switch {
		case inStr && esc:
			esc = false
		case inStr && c == '\\':
			esc = true
		case c == '"':
			inStr = !inStr
		case !inStr && (c == ',' || c == ':'):
			out = append(out, ' ')
		}
	}
	return append(out, '\r', '\n'), nil
}
