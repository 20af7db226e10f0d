package source

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/ktsink/connector/record"
	"github.com/twmb/franz-go/pkg/kadm"
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
	s.member.Store(true)
}

// GroupProtocol is the consumer group protocol the source runs: the
// classic one (JoinGroup and SyncGroup, with the cooperative-sticky
// balancer in the client). Kafka 4's server-side protocol (KIP-848) is
// not used: franz-go advises it from Kafka 4.3 on, since before that an
// offset commit can meet STALE_MEMBER_EPOCH in normal operation.
const GroupProtocol = "classic"

// Membership is what /status says of the source's place in the group.
type Membership struct {
	Group      string `json:"group"`
	Protocol   string `json:"protocol"`
	InstanceID string `json:"instance_id,omitempty"` // static membership
	Member     bool   `json:"member"`                // see Member
}

// Membership returns the group, protocol and static id, and Member.
func (s *Source) Membership() Membership {
	return Membership{Group: s.cfg.Group, Protocol: GroupProtocol, InstanceID: s.cfg.InstanceID, Member: s.Member()}
}

// Member says whether this process holds a current membership of the
// group: its last join ended in an assignment (of any number of
// partitions) and it lost nothing since. False while it joins, and after a
// fence (another process joined with the same kafka.instance_id) until it
// joins again. /readyz reports it.
func (s *Source) Member() bool { return s.member.Load() }

// adjustOffsets hands the assigned partitions to the coordinator with what
// Kafka committed for them and the bounds of their logs, and seeks to the
// starts it decides. A start past the log end under the fail policy ends
// Run with that error.
func (s *Source) adjustOffsets(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	assigned := map[record.TopicPartition]record.Assigned{}
	for t, ps := range offsets {
		for p, o := range ps {
			c := o.EpochOffset().Offset
			if c < 0 {
				c = -1
			}
			assigned[record.TopicPartition{Topic: t, Partition: p}] = record.Assigned{Committed: c, LogStart: -1, LogEnd: -1}
		}
	}
	if err := s.logBounds(ctx, assigned); err != nil {
		// without the bounds a start past the log end would go unseen:
		// franz-go fetches the offsets again
		s.log.Warn("listing the assigned partitions' log bounds failed; will retry", "err", err)
		return offsets, err
	}
	starts, err := s.parts.Assign(ctx, assigned)
	if err != nil {
		if errors.Is(err, record.ErrStartPastEnd) {
			s.fail(err)
		}
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

// logBounds lists the start and end offsets of the assigned partitions'
// logs, and their topics' IDs.
func (s *Source) logBounds(ctx context.Context, assigned map[record.TopicPartition]record.Assigned) error {
	var topics []string
	for tp := range assigned {
		if !slices.Contains(topics, tp.Topic) {
			topics = append(topics, tp.Topic)
		}
	}
	select {
	case <-s.created:
	case <-ctx.Done():
		return ctx.Err()
	}
	adm := kadm.NewClient(s.cl)
	starts, err := adm.ListStartOffsets(ctx, topics...)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("listing log start offsets: %w", err)
	}
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("listing log end offsets: %w", err)
	}
	md, err := adm.Metadata(ctx, topics...)
	if err != nil {
		return fmt.Errorf("reading the assigned topics' metadata: %w", err)
	}
	for tp, a := range assigned {
		if td, ok := md.Topics[tp.Topic]; ok && td.Err == nil {
			a.TopicID = record.TopicID(td.ID)
		}
		if o, ok := starts.Lookup(tp.Topic, tp.Partition); ok {
			a.LogStart = o.Offset
		}
		if o, ok := ends.Lookup(tp.Topic, tp.Partition); ok {
			a.LogEnd = o.Offset
		}
		assigned[tp] = a
	}
	return nil
}

// fail records an error that ends Run.
func (s *Source) fail(err error) {
	s.failOnce.Do(func() {
		s.fatal = err
		close(s.failed)
	})
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
	s.member.Store(false)
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
