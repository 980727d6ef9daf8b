package virtio

import (
	"encoding/binary"
	"fmt"
	"time"
)

// rxLoop reads the backend and hands each frame to the guest.
func (n *Net) rxLoop() {
	defer n.wg.Done()
	buf := make([]byte, NetMaxFrame)
	backoff := time.Millisecond
	for {
		m, err := n.be.ReadFrame(buf)
		if n.stopped() {
			return
		}
		if err != nil {
			// A backend that keeps failing must not spin a CPU.
			n.bad("receive from "+n.be.Name(), err)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = time.Millisecond
		n.deliver(buf[:m])
	}
}

func (n *Net) stopped() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.stop
}

func (n *Net) drop() {
	n.mu.Lock()
	n.dropped++
	n.mu.Unlock()
}

// deliver writes one frame into the RX queue, waiting for the driver to
// post buffers when there are too few; it drops the frame while the device
// is drained (a live save is writing RAM) or the link is down.
func (n *Net) deliver(frame []byte) {
	if len(frame) < NetHdrSize {
		n.bad("receive", fmt.Errorf("frame of %d bytes from %s, shorter than its header", len(frame), n.be.Name()))
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for {
		if n.stop {
			return
		}
		if n.quiet() || !n.linkUp {
			n.dropped++
			return
		}
		n.rxBusy, n.rxKick = true, false
		n.mu.Unlock()
		err := n.receive(frame)
		n.mu.Lock()
		n.rxBusy = false
		n.cond.Broadcast()
		if err != errNoRoom {
			return
		}
		for !n.rxKick && !n.quiet() && !n.stop {
			n.cond.Wait()
		}
	}
}

// rxChain is one receive chain a frame is written into.
type rxChain struct {
	head    uint16
	bufs    []Buffer
	written uint32
}

// receive writes frame into the RX queue: one chain, or with MRG_RXBUF as
// many as it takes (num_buffers says how many). It returns errNoRoom, the
// queue untouched, when the driver has not posted enough buffers yet.
func (n *Net) receive(frame []byte) error {
	if !n.DriverReady() {
		n.drop()
		return nil
	}
	n.syncOffloads()
	neg := n.Negotiated()
	if !netHdrAllowed(frame, NetFeatureGuestCsum, NetFeatureGuestTSO4, NetFeatureGuestTSO6, neg) {
		n.drop()
		return nil
	}
	q := n.Queue(netRXQ)
	if !q.Ready {
		n.drop()
		return nil
	}
	if err := q.check(n.mem); err != nil {
		n.refuse(err)
		return nil
	}
	if err := q.checkPending(n.mem); err != nil {
		n.refuse(err)
		return nil
	}
	mrg, eventIdx := neg&NetFeatureMrgRxBuf != 0, neg&FeatureEventIdx != 0
	start, old := q.LastAvail, q.UsedIdx
	var chains []rxChain
	for room := 0; room < len(frame); {
		head, bufs, ok, err := q.Pop(n.mem)
		if err != nil {
			n.refuse(err)
			return nil
		}
		if !ok {
			// Ask for a notification at the first buffer not seen yet,
			// then give back those taken: the frame is written whole or
			// not at all.
			more, err := q.rearm(n.mem, eventIdx)
			q.LastAvail = start
			if err != nil {
				n.refuse(err)
				return nil
			}
			if more {
				chains, room = nil, 0
				continue
			}
			return errNoRoom
		}
		size := 0
		for _, b := range bufs {
			if !b.Writable {
				n.refuse(fmt.Errorf("%w: a driver-readable descriptor in a receive chain", ErrBadChain))
				return nil
			}
			size += len(b.Data)
		}
		if size < NetHdrSize {
			n.refuse(fmt.Errorf("%w: receive chain of %d bytes, shorter than the %d-byte header", ErrBadChain, size, NetHdrSize))
			return nil
		}
		if !mrg && size < len(frame) {
			// Without MRG_RXBUF the driver posts buffers for the largest
			// frame it accepts: a bigger one is not for it. The chain stays.
			q.LastAvail = start
			n.drop()
			return nil
		}
		chains = append(chains, rxChain{head: head, bufs: bufs})
		room += size
	}
	off := 0
	for i := range chains {
		for _, b := range chains[i].bufs {
			k := copy(b.Data, frame[off:])
			off += k
			chains[i].written += uint32(k)
		}
	}
	var nb [2]byte
	binary.LittleEndian.PutUint16(nb[:], uint16(len(chains)))
	scatterAt(chains[0].bufs, 10, nb[:]) // num_buffers
	for _, c := range chains {
		if err := q.Push(n.mem, c.head, c.written); err != nil {
			n.refuse(err)
			return nil
		}
	}
	n.UpdateQueue(netRXQ, func(s *Queue) { s.LastAvail, s.UsedIdx = q.LastAvail, q.UsedIdx })
	n.notify(&q, old, eventIdx)
	return nil
}

// scatterAt writes data at offset off of the bytes a chain's buffers hold.
func scatterAt(bufs []Buffer, off int, data []byte) {
	for _, b := range bufs {
		if off >= len(b.Data) {
			off -= len(b.Data)
			continue
		}
		k := copy(b.Data[off:], data)
		data, off = data[k:], 0
		if len(data) == 0 {
			return
		}
	}
}
