package coordinator

import (
	"hash/fnv"
	"sort"
	"time"

	"github.com/ktsink/connector/record"
)

// phase is where an assigned partition is in its life on this process.
type phase int

const (
	// owned: its records are queued, batched and written; its committable
	// position is reported to the source.
	owned phase = iota
	// releasing: Revoke is waiting for its in-flight batches; its records
	// are refused, and only Revoke reports its position.
	releasing
	// handedOver: Revoke gave up waiting, or the partition was lost: no
	// batch may write it any more (its next owner may have written newer
	// values already) and nothing of it is committed.
	handedOver
)

func (p phase) String() string {
	switch p {
	case owned:
		return "owned"
	case releasing:
		return "releasing"
	case handedOver:
		return "handed_over"
	}
	return "unknown"
}

// partition is one assigned partition. Guarded by Coordinator.mu.
type partition struct {
	tp     record.TopicPartition
	worker int
	phase  phase
	// next is where the next batch's span starts; -1 before the first
	// record when the start is unknown.
	next      int64
	tracker   *tracker
	committed int64 // last position committed to Kafka, or the start's
	inflight  int   // batches and drops of it not yet ended
	dropping  int   // dropped records of it not yet durably dead-lettered
	lastTS    time.Time
}

func newPartition(tp record.TopicPartition, worker int) *partition {
	return &partition{tp: tp, worker: worker, next: -1, tracker: newTracker(), committed: -1}
}

// accepts says whether the partition's records are queued.
func (ps *partition) accepts() bool { return ps.phase == owned }

// writable says whether a batch may still write the partition.
func (ps *partition) writable() bool { return ps.phase == owned || ps.phase == releasing }

// workerFor spreads partitions over workers by hash, so a partition always
// goes to the same worker and its records stay in order.
func workerFor(tp record.TopicPartition, workers int) int {
	h := fnv.New32a()
	h.Write([]byte(tp.Topic))
	return int((h.Sum32() + uint32(tp.Partition)) % uint32(workers))
}

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
	// committable is the offset to commit: one past the last record of
	// the completed prefix, or the start offset before anything completed; -1
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

// restartAt forgets the registered records before off (the database holds
// them, written by another process) and makes off the committable offset,
// or past it the records after it already done.
func (t *tracker) restartAt(off int64) {
	var offs []int64
	var done []bool
	for i := t.head; i < len(t.offs); i++ {
		if t.offs[i] >= off {
			offs, done = append(offs, t.offs[i]), append(done, t.done[i])
		}
	}
	t.offs, t.done, t.head = offs, done, 0
	t.committable = max(t.committable, off)
	for t.head < len(t.offs) && t.done[t.head] {
		t.committable = t.offs[t.head] + 1
		t.head++
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
