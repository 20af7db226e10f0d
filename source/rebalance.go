package source

import (
	"context"
	"strconv"

	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kgo"
)

func toTPs(m map[string][]int32) []record.TopicPartition {
	var out []record.TopicPartition
	for t, ps := range m {
		for _, p := range ps {
			out = append(out, record.TopicPartition{Topic: t, Partition: p})
		}
	}
	return out
}

func (s *Source) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	tps := toTPs(assigned)
	s.mu.Lock()
	s.assigned += len(tps)
	s.mu.Unlock()
	s.m.Rebalances.WithLabelValues("assigned").Inc()
	s.log.Info("partitions assigned", "partitions", len(tps), "detail", assigned)
}

// adjustOffsets hands the assigned partitions to the coordinator with what
// Kafka committed for them, and seeks to the starts it decides.
func (s *Source) adjustOffsets(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	committed := map[record.TopicPartition]int64{}
	for t, ps := range offsets {
		for p, o := range ps {
			c := o.EpochOffset().Offset
			if c < 0 {
				c = -1
			}
			committed[record.TopicPartition{Topic: t, Partition: p}] = c
		}
	}
	starts, err := s.parts.Assign(ctx, committed)
	if err != nil {
		// Failing here makes franz-go retry the offset fetch; nothing
		// is consumed from an unknown position.
		s.log.Error("deciding start offsets failed", "err", err)
		return offsets, err
	}
	for tp, st := range starts {
		offsets[tp.Topic][tp.Partition] = kgo.NewOffset().At(st).WithEpoch(-1)
	}
	return offsets, nil
}

// onRevoked commits the revoked partitions' final positions before they
// go.
func (s *Source) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	tps := toTPs(revoked)
	if len(tps) == 0 {
		return
	}
	s.m.Rebalances.WithLabelValues("revoked").Inc()
	offs, err := s.parts.Revoke(ctx, tps)
	if err != nil {
		s.log.Warn("releasing partitions", "kind", "revoked", "err", err)
	}
	if err := s.commitPositions(ctx, offs); err != nil {
		s.log.Warn("committing revoked partitions", "err", err)
	}
	s.forget(tps)
	s.log.Info("partitions revoked", "partitions", len(tps), "detail", revoked)
}

// onLost releases partitions without committing anything of them.
func (s *Source) onLost(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	tps := toTPs(lost)
	if len(tps) == 0 {
		return
	}
	s.m.Rebalances.WithLabelValues("lost").Inc()
	if err := s.parts.Lost(ctx, tps); err != nil {
		s.log.Warn("releasing partitions", "kind", "lost", "err", err)
	}
	s.forget(tps)
	s.log.Info("partitions lost", "partitions", len(tps), "detail", lost)
}

func (s *Source) forget(tps []record.TopicPartition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.assigned -= len(tps)
	for _, tp := range tps {
		delete(s.hwm, tp)
		s.m.ConsumerLag.DeleteLabelValues(tp.Topic, strconv.Itoa(int(tp.Partition)))
	}
}
