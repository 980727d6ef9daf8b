package snapshot

import (
	"hash/crc32"
	"sync"
)

// CRC32C is affine: crc(new) = crc(old) ^ raw(0, old^new) for inputs of
// one length, where raw is the bare register update (no pre- and
// post-inversion). old^new is zero outside the dirty granules, and running
// the register over g zero bytes is a linear map of its 32 bits, so an
// incremental save gets a changed chunk's CRC from the base's CRC and the
// changed granules alone (incremental.go), instead of reading all of the
// chunk.

// rawCRC runs the bare CRC32C register r over p.
func rawCRC(r uint32, p []byte) uint32 { return ^crc32.Update(^r, castagnoli, p) }

// zeroShift is the map of the register over n zero bytes: bit i of the
// register becomes cols[i].
type zeroShift struct{ cols [32]uint32 }

func newZeroShift(n uint64) *zeroShift {
	z := &zeroShift{}
	zeros := make([]byte, n)
	for i := range z.cols {
		z.cols[i] = rawCRC(1<<i, zeros)
	}
	return z
}

func (z *zeroShift) apply(r uint32) uint32 {
	var out uint32
	for i := 0; r != 0; i, r = i+1, r>>1 {
		if r&1 != 0 {
			out ^= z.cols[i]
		}
	}
	return out
}

var zeroShifts sync.Map // length -> *zeroShift

func shiftFor(n uint64) *zeroShift {
	if z, ok := zeroShifts.Load(n); ok {
		return z.(*zeroShift)
	}
	z := newZeroShift(n)
	zeroShifts.Store(n, z)
	return z
}
