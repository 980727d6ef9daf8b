package snapshot

import (
	"fmt"
	"io"
)

// Captured is a paused machine's state without its RAM's content: vCPUs,
// irqchip, PIT, clock and devices are read at Capture; RAM is read later,
// by Save, through SaveOptions.Freeze. It is the first half of a live
// save, whose guest runs on between the two (docs/live-save.md).
type Captured struct{ p *plan }

// Capture reads everything but RAM from the paused machine.
func Capture(m Machine) (*Captured, error) {
	p, err := newPlan(m)
	if err != nil {
		return nil, fmt.Errorf("save VM state: %w", err)
	}
	return &Captured{p: p}, nil
}

// Size is the length of the stream Save writes.
func (c *Captured) Size() uint64 { return c.p.size() }

// Chunks is the number of RAM chunks (ChunkSize bytes each, the last one
// possibly shorter) that Save asks Freeze for.
func (c *Captured) Chunks() int { return c.p.chunks }

// Save writes the captured state as a format-2 stream, like Save; RAM
// chunks come from opts.Freeze where it is set.
func (c *Captured) Save(w io.WriterAt, opts SaveOptions) (uint64, error) {
	return c.p.write(w, opts)
}
