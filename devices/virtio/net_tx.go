package virtio

import "fmt"

func (n *Net) txWorker() {
	defer n.wg.Done()
	for {
		n.mu.Lock()
		for (!n.txPending || n.quiet()) && !n.stop {
			n.cond.Wait()
		}
		if n.stop {
			n.mu.Unlock()
			return
		}
		n.txPending, n.txBusy = false, true
		n.mu.Unlock()
		n.transmit()
		n.mu.Lock()
		n.txBusy = false
		n.cond.Broadcast()
		n.mu.Unlock()
	}
}

// txStopAsked reports whether Drain (or Close) wants the worker to stop
// between two frames; what is left in the ring is taken up after Resume.
func (n *Net) txStopAsked() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.quiet() {
		n.txPending = true
	}
	return n.quiet() || n.stop
}

// transmit sends every frame of the TX queue to the backend.
func (n *Net) transmit() {
	if !n.DriverReady() {
		return
	}
	q := n.Queue(netTXQ)
	if !q.Ready {
		return
	}
	if err := q.check(n.mem); err != nil {
		n.refuse(err)
		return
	}
	n.syncOffloads()
	neg := n.Negotiated()
	eventIdx := neg&FeatureEventIdx != 0
	old := q.UsedIdx
	broken := false
	if err := q.checkPending(n.mem); err != nil {
		n.refuse(err)
		return
	}
	for served := 0; !broken && !n.txStopAsked(); served++ {
		if served == int(q.Num) {
			// One ring's worth per round: Drain and the receive side get
			// their turn, and the worker comes back for the rest.
			n.Kick(netTXQ)
			break
		}
		head, bufs, ok, err := q.Pop(n.mem)
		if err != nil {
			n.refuse(err)
			broken = true
			break
		}
		if !ok {
			more, err := q.rearm(n.mem, eventIdx)
			if err != nil {
				n.refuse(err)
				broken = true
			}
			if !more {
				break
			}
			continue
		}
		frame, err := n.gather(bufs)
		if err != nil {
			n.refuse(err)
			broken = true
			break
		}
		// A frame asking for an offload the driver did not negotiate is
		// dropped: the backend would take the header at its word.
		if n.LinkUp() && netHdrAllowed(frame, NetFeatureCsum, NetFeatureHostTSO4, NetFeatureHostTSO6, neg) {
			if err := n.be.WriteFrame(frame); err != nil {
				n.bad("transmit to "+n.be.Name(), err)
			}
		}
		if err := q.Push(n.mem, head, 0); err != nil {
			n.refuse(err)
			broken = true
		}
	}
	n.UpdateQueue(netTXQ, func(s *Queue) { s.LastAvail, s.UsedIdx = q.LastAvail, q.UsedIdx })
	if !broken {
		n.notify(&q, old, eventIdx)
	}
}

// rearm is called with the ring empty: with event indices it asks the
// driver to notify at the next entry, then looks again, since the driver
// may have added one before it saw the request. more says to go on.
func (q *Queue) rearm(mem Memory, eventIdx bool) (more bool, err error) {
	if !eventIdx {
		return false, nil
	}
	if err := q.setAvailEvent(mem, q.LastAvail); err != nil {
		return false, err
	}
	idx, err := q.availIdx(mem)
	if err != nil {
		return false, err
	}
	return idx != q.LastAvail, nil
}

// checkPending refuses an available index more than a ring ahead of the
// device: the driver cannot have more buffers outstanding than the queue
// holds, and serving them would walk the ring round and round.
func (q *Queue) checkPending(mem Memory) error {
	idx, err := q.availIdx(mem)
	if err != nil {
		return err
	}
	if idx-q.LastAvail > q.Num {
		return fmt.Errorf("%w: available index %d is more than %d entries ahead of %d", ErrBadChain, idx, q.Num, q.LastAvail)
	}
	return nil
}

// notify interrupts the driver for the used entries since old, if it
// wants to be.
func (n *Net) notify(q *Queue, old uint16, eventIdx bool) {
	need, err := q.needInterrupt(n.mem, old, eventIdx)
	if err != nil {
		n.refuse(err)
		return
	}
	if need {
		n.Interrupt()
	}
}

// gather copies a transmit chain into one frame: driver-readable buffers
// only, a whole header, at most NetMaxFrame bytes.
func (n *Net) gather(bufs []Buffer) ([]byte, error) {
	f := n.txBuf[:0]
	for _, b := range bufs {
		if b.Writable {
			return nil, fmt.Errorf("%w: a device-writable descriptor in a transmit chain", ErrBadChain)
		}
		if len(f)+len(b.Data) > NetMaxFrame {
			return nil, fmt.Errorf("%w: transmit chain longer than %d bytes", ErrBadChain, NetMaxFrame)
		}
		f = append(f, b.Data...)
	}
	if len(f) < NetHdrSize {
		return nil, fmt.Errorf("%w: transmit chain of %d bytes, shorter than the %d-byte header", ErrBadChain, len(f), NetHdrSize)
	}
	return f, nil
}
