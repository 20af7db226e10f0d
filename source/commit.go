package source

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// commitLoop commits what the coordinator reports committable, at each of
// its wake-ups and every CommitInterval, until ctx ends.
func (s *Source) commitLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-s.pos.CommitWake():
		case <-t.C:
		case <-ctx.Done():
			return
		}
		if err := s.commit(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("committing offsets failed; will retry", "err", err)
		}
	}
}

// commit commits the positions the coordinator reports committable.
func (s *Source) commit(ctx context.Context) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.commitLocked(ctx, s.pos.Committable())
}

// commitPositions commits offs (a revoke's final positions).
func (s *Source) commitPositions(ctx context.Context, offs map[record.TopicPartition]record.Position) error {
	s.commitMu.Lock()
	defer s.commitMu.Unlock()
	return s.commitLocked(ctx, offs)
}

func (s *Source) commitLocked(ctx context.Context, offs map[record.TopicPartition]record.Position) error {
	if len(offs) == 0 {
		return nil
	}
	if err := s.commitOffsets(ctx, offs); err != nil {
		s.m.OffsetCommits.WithLabelValues("error").Inc()
		return fmt.Errorf("committing offsets: %w", err)
	}
	s.m.OffsetCommits.WithLabelValues("ok").Inc()
	s.mu.Lock()
	for tp, p := range offs {
		if h, ok := s.hwm[tp]; ok {
			s.m.ConsumerLag.WithLabelValues(tp.Topic, strconv.Itoa(int(tp.Partition))).Set(float64(max(h-p.Offset, 0)))
		}
	}
	s.mu.Unlock()
	return s.pos.Committed(offs)
}

// commitOffsets commits offs for the group, failing on any partition's
// error.
func (s *Source) commitOffsets(ctx context.Context, offs map[record.TopicPartition]record.Position) error {
	m := map[string]map[int32]kgo.EpochOffset{}
	for tp, p := range offs {
		if m[tp.Topic] == nil {
			m[tp.Topic] = map[int32]kgo.EpochOffset{}
		}
		m[tp.Topic][tp.Partition] = kgo.EpochOffset{Epoch: p.LeaderEpoch, Offset: p.Offset}
	}
	var cerr error
	s.cl.CommitOffsetsSync(ctx, m, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			cerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if e := kerr.ErrorForCode(p.ErrorCode); e != nil {
					cerr = errors.Join(cerr, fmt.Errorf("%s/%d: %w", t.Topic, p.Partition, e))
				}
			}
		}
	})
	return cerr
}
