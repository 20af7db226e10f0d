package coordinator

import "sort"

// tracker follows the records of one partition from submission to
// completion and knows the committable offset: one past the last record of
// the contiguous prefix of completed records. Records complete out of order
// only when drop_oldest dead-letters a queued record while an earlier batch
// of the same partition is in flight. Offsets are registered in increasing
// order; the log may have gaps (compaction, transaction markers), so
// contiguity is over registered records, not offset numbers.
type tracker struct {
	offs []int64
	done []bool
	head int
	// committable is the offset to commit: one past the last record of the
	// completed prefix, or the start offset before anything completed; -1
	// when unknown.
	committable int64
	epoch       int32
}

func newTracker() *tracker { return &tracker{committable: -1, epoch: -1} }

func (t *tracker) register(off int64) {
	t.offs = append(t.offs, off)
	t.done = append(t.done, false)
}

// complete marks off done and advances the committable offset.
func (t *tracker) complete(off int64, epoch int32) {
	live := t.offs[t.head:]
	i := sort.Search(len(live), func(i int) bool { return live[i] >= off })
	if i == len(live) || live[i] != off {
		return // not registered here (forgotten by a revoke): nothing to do
	}
	t.done[t.head+i] = true
	if epoch > t.epoch {
		t.epoch = epoch
	}
	for t.head < len(t.offs) && t.done[t.head] {
		t.committable = t.offs[t.head] + 1
		t.head++
	}
	if t.head > 1024 && t.head*2 > len(t.offs) {
		n := copy(t.offs, t.offs[t.head:])
		copy(t.done, t.done[t.head:])
		t.offs, t.done = t.offs[:n], t.done[:n]
		t.head = 0
	}
}

// pending counts registered records not yet done.
func (t *tracker) pending() int {
	n := 0
	for _, d := range t.done[t.head:] {
		if !d {
			n++
		}
	}
	return n
}
