// The wait queue: Acquire's FIFO of waiters, a free backend's hand-off to the
// oldest waiter, else to the idle stack (putLocked), and every wait ended
// with an error (failWaitersLocked).

package pool

import "time"

// grant is what a waiter receives: a backend, or the error that ends its
// wait (circuit open, shutdown).
type grant struct {
	b   *backend
	err error
}

// waiter is one Acquire waiting in line. Its grant is sent under p.mu at
// the moment it is unlinked from the queue, so a waiter that finds itself
// no longer queued knows a grant is already in ch.
type waiter struct {
	ch         chan grant // buffered(1)
	at         time.Time  // its Acquire's start: its place in a Group's queue
	queued     bool
	prev, next *waiter
}

func newWaiter() *waiter { return &waiter{ch: make(chan grant, 1)} }

// waitQueue is an intrusive FIFO of waiters with O(1) removal from the
// middle (a waiter whose context ends leaves from wherever it is).
// Guarded by p.mu.
type waitQueue struct {
	head, tail *waiter
	n          int
}

func (q *waitQueue) len() int { return q.n }

// pushBack puts w last in line.
func (q *waitQueue) pushBack(w *waiter) {
	w.queued, w.prev, w.next = true, q.tail, nil
	if q.tail != nil {
		q.tail.next = w
	} else {
		q.head = w
	}
	q.tail = w
	q.n++
}

// pushFront puts w first in line: a waiter whose backend failed
// validation keeps the place it had earned.
func (q *waitQueue) pushFront(w *waiter) {
	w.queued, w.prev, w.next = true, nil, q.head
	if q.head != nil {
		q.head.prev = w
	} else {
		q.tail = w
	}
	q.head = w
	q.n++
}

// remove unlinks w, which must be queued.
func (q *waitQueue) remove(w *waiter) {
	if w.prev != nil {
		w.prev.next = w.next
	} else {
		q.head = w.next
	}
	if w.next != nil {
		w.next.prev = w.prev
	} else {
		q.tail = w.prev
	}
	w.queued, w.prev, w.next = false, nil, nil
	q.n--
}

// popFront unlinks and returns the oldest waiter, or nil.
func (q *waitQueue) popFront() *waiter {
	w := q.head
	if w != nil {
		q.remove(w)
	}
	return w
}

// putLocked gives a free backend to the oldest waiter directly (it never
// goes through the idle list, where a newcomer could snatch it), or
// pushes it on the idle stack when nobody waits (closes it then under
// NoIdle). After Close it closes it instead.
func (p *Pool) putLocked(b *backend, now time.Time) {
	if p.closed {
		p.retireLocked(b, retireShutdown, "pool closed", now)
		return
	}
	// It was in use until now: the validate-after-idle clock starts here,
	// also for a backend handed on directly, which was never idle at all.
	b.idleSince = now
	switch {
	case p.admin.paused && !p.cfg.NoIdle:
		p.idle = append(p.idle, b) // held back until Resume
		return
	case !p.admin.paused:
		if w := p.waiters.popFront(); w != nil {
			w.ch <- grant{b: b}
			return
		}
	}
	if p.cfg.NoIdle {
		p.retireLocked(b, retireIdle, "free with nobody waiting, and this database keeps no idle backends", now)
		return
	}
	b.fresh = false // it has sat idle: validation rules apply from now
	p.idle = append(p.idle, b)
	if g := p.cfg.Group; g != nil && g.pressure.Load() > 0 {
		p.poke() // another pool of the group may need this backend's slot
	}
}

// failWaitersLocked ends every wait with err.
func (p *Pool) failWaitersLocked(err error) {
	for w := p.waiters.popFront(); w != nil; w = p.waiters.popFront() {
		w.ch <- grant{err: err}
	}
}
