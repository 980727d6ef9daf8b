package control

import (
	"sync"
	"time"
)

// EventKind names an asynchronous event of the monitor.
type EventKind int

// Events, each QEMU's event of the same meaning.
const (
	EventStop          EventKind = iota + 1 // the VM stopped running
	EventResume                             // the VM runs again
	EventShutdown                           // the VM ended: Guest, Reason
	EventReset                              // the VM was reset: Guest, Reason
	EventGuestPanicked                      // the guest reported a crash
	EventJobStatus                          // JobID went to JobStatus
	EventRAMPopulated                       // a lazily loaded snapshot's RAM is all in place: Node, Tag
	EventRAMLoadFailed                      // a lazy load found a bad RAM chunk; the VM stopped: Node, Tag, Err
)

// Reason says why the VM shut down or was reset.
type Reason int

// Reasons (QEMU's ShutdownCause).
const (
	ReasonHostQuit      Reason = iota + 1 // a monitor's quit
	ReasonHostSignal                      // a signal or the console's quit key
	ReasonHostReset                       // a monitor's system_reset
	ReasonGuestShutdown                   // the guest powered off
	ReasonGuestReset                      // the guest rebooted
	ReasonGuestPanic                      // the guest crashed or KVM failed
)

// Event is one asynchronous event, as plain data.
type Event struct {
	Kind      EventKind
	Time      time.Time
	Guest     bool   // EventShutdown, EventReset: the guest caused it
	Reason    Reason // EventShutdown, EventReset
	JobID     string // EventJobStatus
	JobStatus JobStatus
	Node, Tag string // EventRAMPopulated, EventRAMLoadFailed
	Err       error  // EventRAMLoadFailed
}

// hub fans events out to subscribers in the order they are emitted.
type hub struct {
	mu      sync.Mutex
	subs    map[int]func(Event)
	nextSub int
}

// Subscribe registers an event callback; callbacks must not block.
func (h *hub) Subscribe(f func(Event)) (unsubscribe func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[int]func(Event){}
	}
	id := h.nextSub
	h.nextSub++
	h.subs[id] = f
	return func() {
		h.mu.Lock()
		delete(h.subs, id)
		h.mu.Unlock()
	}
}

func (h *hub) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	h.mu.Lock()
	subs := make([]func(Event), 0, len(h.subs))
	for _, f := range h.subs {
		subs = append(subs, f)
	}
	h.mu.Unlock()
	for _, f := range subs {
		f(e)
	}
}
