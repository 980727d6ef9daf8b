package virtio

import "encoding/binary"

// FeatureEventIdx is VIRTIO_RING_F_EVENT_IDX: each side publishes the ring
// index at which it wants to be told of new work (used_event at the end of
// the available ring, avail_event at the end of the used ring), so that a
// busy queue costs neither an exit per kick nor an interrupt per buffer.
const FeatureEventIdx = uint64(1) << 29

// availFlagNoInterrupt is VIRTQ_AVAIL_F_NO_INTERRUPT: without event
// indices, the driver's request not to be interrupted.
const availFlagNoInterrupt = 1

// ring16 atomically reads the 16-bit ring field at gpa. Ring fields are
// 2-byte aligned inside 4-byte aligned rings (Queue.check), so the aligned
// 32-bit word holding the field is read whole; a field in the low half
// whose word would pass the end of guest RAM (a ring placed at its very
// end) is read plainly, as nothing else could be.
func ring16(mem Memory, gpa uint64) (uint16, error) {
	if gpa%4 == 2 {
		w, err := mem.Slice(gpa-2, 4)
		if err != nil {
			return 0, err
		}
		return uint16(loadWord(w) >> 16), nil
	}
	if w, err := mem.Slice(gpa, 4); err == nil {
		return uint16(loadWord(w)), nil
	}
	b, err := mem.Slice(gpa, 2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b), nil
}

// setRing16 atomically writes the 16-bit ring field at gpa (see ring16).
func setRing16(mem Memory, gpa uint64, v uint16) error {
	if gpa%4 == 2 {
		w, err := mem.Slice(gpa-2, 4)
		if err != nil {
			return err
		}
		storeHigh16(w, v)
		return nil
	}
	if w, err := mem.Slice(gpa, 4); err == nil {
		storeLow16(w, v)
		return nil
	}
	b, err := mem.Slice(gpa, 2)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint16(b, v)
	return nil
}

// availIdx is the driver's published available index.
func (q *Queue) availIdx(mem Memory) (uint16, error) { return ring16(mem, q.Avail+2) }

// setAvailEvent asks the driver to notify once it makes entry idx
// available (the avail_event field after the used ring).
func (q *Queue) setAvailEvent(mem Memory, idx uint16) error {
	return setRing16(mem, q.Used+4+8*uint64(q.Num), idx)
}

// needInterrupt says whether the driver wants an interrupt for the used
// entries from old to q.UsedIdx: with event indices when the driver's
// used_event lies in that range (vring_need_event), else unless it set
// VIRTQ_AVAIL_F_NO_INTERRUPT. The caller published UsedIdx first, through
// an atomic store, so a driver that moves used_event meanwhile is seen.
func (q *Queue) needInterrupt(mem Memory, old uint16, eventIdx bool) (bool, error) {
	if q.UsedIdx == old {
		return false, nil
	}
	if !eventIdx {
		w, err := mem.Slice(q.Avail, 4)
		if err != nil {
			return false, err
		}
		return loadWord(w)&availFlagNoInterrupt == 0, nil
	}
	ev, err := ring16(mem, q.Avail+4+2*uint64(q.Num))
	if err != nil {
		return false, err
	}
	return q.UsedIdx-ev-1 < q.UsedIdx-old, nil
}
