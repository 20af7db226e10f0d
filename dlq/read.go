package dlq

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// readStall is how long ReadTopic waits for a partition it has not read
// to the end before giving up.
const readStall = 30 * time.Second

// rotatedLayout is the suffix rotateLocked gives an old file.
const rotatedLayout = "20060102T150405.000000000"

// ID names a dead letter by the record it holds.
type ID struct {
	Topic     string
	Partition int32
	Offset    int64
}

func (k ID) String() string { return fmt.Sprintf("%s/%d@%d", k.Topic, k.Partition, k.Offset) }

// ID returns the letter's record's topic, partition and offset.
func (l *Letter) ID() ID { return ID{Topic: l.Topic, Partition: l.Partition, Offset: l.Offset} }

// Name names the letter's record the way every error about a record names
// it: topic/partition@offset.
func (l *Letter) Name() string { return l.ID().String() }

// Files returns the dead-letter file at path and its rotated siblings
// (path.<timestamp>), oldest first, path itself last. A missing path is
// left out; other siblings (such as path.replayed) are ignored.
func Files(path string) ([]string, error) {
	matches, err := filepath.Glob(globEscape(path) + ".*")
	if err != nil {
		return nil, fmt.Errorf("dlq: listing rotated files of %s: %w", path, err)
	}
	var out []string
	for _, m := range matches {
		suffix := strings.TrimPrefix(m, path+".")
		if _, err := time.Parse(rotatedLayout, suffix); err == nil {
			out = append(out, m)
		}
	}
	slices.Sort(out) // the suffix sorts by time
	if _, err := os.Stat(path); err == nil {
		out = append(out, path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("dlq: %w", err)
	}
	return out, nil
}

func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// ReadFiles reads every letter of the dead-letter file at path and of its
// rotated siblings, oldest file first, in file order, skipping the lines
// that do not parse (see ReadFilesTorn, which also reports them). No file
// at all is no letters.
func ReadFiles(path string) ([]Letter, error) {
	letters, _, err := ReadFilesTorn(path)
	return letters, err
}

// ReadFilesTorn reads like ReadFiles and also returns the lines it skipped
// because they do not parse, wherever they are in a file. Such a line is
// normally the trace of a crash mid-append (the letter was not
// acknowledged, so its record was not passed, and a Writer opening the
// file cuts it); a letter glued to such a fragment by an older version is
// read, and only the fragment skipped. Only a file that cannot be read is
// an error.
func ReadFilesTorn(path string) ([]Letter, []TornLine, error) {
	files, err := Files(path)
	if err != nil {
		return nil, nil, err
	}
	var out []Letter
	var torn []TornLine
	for _, f := range files {
		ls, tl, err := readLines[Letter](f)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, ls...)
		torn = append(torn, tl...)
	}
	return out, torn, nil
}

// ReadTopic reads every letter of the dead-letter topic, from the start of
// each partition to its end offset at the time of the call, with a client
// of its own (no consumer group, nothing committed). opts add to the
// client's options (SASL, TLS, a logger).
func ReadTopic(ctx context.Context, brokers []string, topic string, opts ...kgo.Opt) ([]Letter, error) {
	from, until, err := topicBounds(ctx, brokers, topic, opts)
	if err != nil {
		return nil, err
	}
	if len(until) == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from})}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("dlq: creating consumer: %w", err)
	}
	defer cl.Close()
	var out []Letter
	for len(until) > 0 {
		if out, err = readFetch(ctx, cl, topic, until, out); err != nil {
			return out, fmt.Errorf("dlq: reading topic %s: %w", topic, err)
		}
	}
	return out, nil
}

// topicBounds lists, with a client of its own, where each partition of
// topic that holds records starts (from) and ends (until: the end offset
// still to reach).
func topicBounds(ctx context.Context, brokers []string, topic string, opts []kgo.Opt) (from map[int32]kgo.Offset, until map[int32]int64, err error) {
	admCl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(brokers...)}, opts...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("dlq: creating client: %w", err)
	}
	adm := kadm.NewClient(admCl)
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	var ends kadm.ListedOffsets
	if err == nil {
		ends, err = adm.ListEndOffsets(ctx, topic)
		if err == nil {
			err = ends.Error()
		}
	}
	admCl.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("dlq: listing offsets of topic %s: %w", topic, err)
	}
	from, until = map[int32]kgo.Offset{}, map[int32]int64{}
	ends.Each(func(lo kadm.ListedOffset) {
		s, _ := starts.Lookup(topic, lo.Partition)
		if lo.Offset > s.Offset {
			from[lo.Partition] = kgo.NewOffset().At(s.Offset)
			until[lo.Partition] = lo.Offset
		}
	})
	return from, until, nil
}

// readFetch polls one fetch and appends its letters below the end offsets
// of until to out, deleting from until the partitions it has read to the
// end. A partition that yields nothing for readStall (its last offsets
// being transaction markers, say) ends the read with an error rather than
// a hang.
func readFetch(ctx context.Context, cl *kgo.Client, topic string, until map[int32]int64, out []Letter) ([]Letter, error) {
	pctx, cancel := context.WithTimeout(ctx, readStall)
	fs := cl.PollFetches(pctx)
	stalled := pctx.Err() != nil
	cancel()
	if err := ctx.Err(); err != nil {
		return out, err
	}
	if stalled && fs.NumRecords() == 0 {
		var short []string
		for p, end := range until {
			short = append(short, fmt.Sprintf("partition %d (end offset %d)", p, end))
		}
		slices.Sort(short)
		return out, fmt.Errorf("nothing more read within %s from %s", readStall, strings.Join(short, ", "))
	}
	var fetchErr error
	fs.EachError(func(t string, p int32, err error) {
		fetchErr = errors.Join(fetchErr, fmt.Errorf("partition %d: %w", p, err))
	})
	if fetchErr != nil {
		return out, fetchErr
	}
	fs.EachPartition(func(p kgo.FetchTopicPartition) {
		end, ok := until[p.Partition]
		if !ok {
			return
		}
		for _, r := range p.Records {
			if r.Offset >= end {
				break
			}
			l, err := FromRecord(r)
			if err != nil {
				fetchErr = errors.Join(fetchErr, err)
				continue
			}
			out = append(out, l)
		}
		if n := len(p.Records); n > 0 && p.Records[n-1].Offset+1 >= end {
			delete(until, p.Partition)
		}
	})
	return out, fetchErr
}

// FromRecord rebuilds a letter from a record of the dead-letter topic: the
// ktsink.dlq.* headers are its metadata, the other headers, the key and the
// value are the original record's.
func FromRecord(r *kgo.Record) (Letter, error) {
	l := Letter{V: Version, Key: r.Key, Value: r.Value, Attempts: 1}
	var errs []error
	num := func(h kgo.RecordHeader, bits int) int64 {
		n, err := strconv.ParseInt(string(h.Value), 10, bits)
		if err != nil {
			errs = append(errs, fmt.Errorf("header %s: %w", h.Key, err))
		}
		return n
	}
	tm := func(h kgo.RecordHeader) time.Time {
		t, err := time.Parse(time.RFC3339Nano, string(h.Value))
		if err != nil {
			errs = append(errs, fmt.Errorf("header %s: %w", h.Key, err))
		}
		return t
	}
	var haveTopic, havePartition, haveOffset bool
	for _, h := range r.Headers {
		switch h.Key {
		case HeaderVersion:
			l.V = int(num(h, 32))
		case HeaderTopic:
			l.Topic, haveTopic = string(h.Value), true
		case HeaderPartition:
			l.Partition, havePartition = int32(num(h, 32)), true
		case HeaderOffset:
			l.Offset, haveOffset = num(h, 64), true
		case HeaderTimestamp:
			l.Timestamp = tm(h)
		case HeaderClass:
			l.ErrorClass = string(h.Value)
		case HeaderError:
			l.Error = string(h.Value)
		case HeaderAttempts:
			l.Attempts = int(num(h, 32))
		case HeaderFailedAt:
			l.LastFailure = tm(h)
		case HeaderInstance:
			l.Instance = string(h.Value)
		default:
			l.Headers = append(l.Headers, record.Header{Key: h.Key, Value: h.Value})
		}
	}
	if !haveTopic || !havePartition || !haveOffset {
		errs = append(errs, errors.New("lacks the ktsink.dlq.topic, partition or offset header"))
	}
	l.FirstFailure = l.LastFailure
	if err := errors.Join(errs...); err != nil {
		return l, fmt.Errorf("dlq: record %s/%d@%d of the dead-letter topic: %w", r.Topic, r.Partition, r.Offset, err)
	}
	return l, nil
}

// Filter selects letters. The zero Filter selects every letter.
type Filter struct {
	// Topic is the source topic; empty: any.
	Topic string
	// Class is the error class (decode, data, overflow); empty: any.
	Class string
	// Partition of the source topic; nil: any.
	Partition *int32
	// FromOffset and ToOffset bound the source offset, both inclusive;
	// nil: unbounded.
	FromOffset, ToOffset *int64
	// Since (inclusive) and Until (exclusive) bound the time the letter
	// was written (its last failure); zero: unbounded.
	Since, Until time.Time
}

// Match says whether the filter selects l.
func (f *Filter) Match(l *Letter) bool {
	switch {
	case f.Topic != "" && l.Topic != f.Topic,
		f.Class != "" && l.ErrorClass != f.Class,
		f.Partition != nil && l.Partition != *f.Partition,
		f.FromOffset != nil && l.Offset < *f.FromOffset,
		f.ToOffset != nil && l.Offset > *f.ToOffset,
		!f.Since.IsZero() && l.LastFailure.Before(f.Since),
		!f.Until.IsZero() && !l.LastFailure.Before(f.Until):
		return false
	}
	return true
}

// Dedupe keeps one letter per record (topic, partition, offset): the one
// written last (the latest last failure; of equal ones, the later in
// letters). The file is written at least once, so a crash between its
// append and the topic's acknowledgement repeats letters. The result is
// sorted by topic, partition and offset.
func Dedupe(letters []Letter) []Letter {
	idx := make(map[ID]int, len(letters))
	var out []Letter
	for _, l := range letters {
		i, ok := idx[l.ID()]
		if !ok {
			idx[l.ID()] = len(out)
			out = append(out, l)
			continue
		}
		if !l.LastFailure.Before(out[i].LastFailure) {
			out[i] = l
		}
	}
	slices.SortFunc(out, func(a, b Letter) int {
		return cmp.Or(strings.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})
	return out
}

// Select dedupes letters and returns those f selects, sorted, and how many
// it left out.
func Select(letters []Letter, f Filter) (selected []Letter, filtered int) {
	for _, l := range Dedupe(letters) {
		if f.Match(&l) {
			selected = append(selected, l)
		} else {
			filtered++
		}
	}
	return selected, filtered
}
