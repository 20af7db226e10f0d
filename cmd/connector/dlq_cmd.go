package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/dlq"
	"github.com/twmb/franz-go/pkg/kgo"
)

// dlqFlags are the flags every dlq command shares: where the letters come
// from and which of them to take.
type dlqFlags struct {
	file      string
	fromTopic bool
	logPath   string
	pending   bool
	filter    dlq.Filter
}

func registerDLQFlags(fs *flag.FlagSet) *dlqFlags {
	f := &dlqFlags{}
	fs.StringVar(&f.file, "file", "", "dead-letter NDJSON `file`, read with its rotated siblings (default dlq.file)")
	fs.BoolVar(&f.fromTopic, "from-topic", false, "read the dead-letter topic (dlq.topic) instead of the file")
	fs.StringVar(&f.logPath, "log", "", "replay log `file` (default <dead-letter file>.replayed)")
	fs.BoolVar(&f.pending, "pending", false, "only letters never replayed successfully (per the replay log)")
	fs.StringVar(&f.filter.Topic, "topic", "", "only letters of this source `topic`")
	fs.StringVar(&f.filter.Class, "class", "", "only this error `class` (decode, data, overflow)")
	fs.Func("partition", "only this source `partition`", func(s string) error {
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil || n < 0 {
			return fmt.Errorf("not a partition number: %q", s)
		}
		p := int32(n)
		f.filter.Partition = &p
		return nil
	})
	offset := func(dst **int64) func(string) error {
		return func(s string) error {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil || n < 0 {
				return fmt.Errorf("not an offset: %q", s)
			}
			*dst = &n
			return nil
		}
	}
	fs.Func("from-offset", "only source offsets from this `offset` on (inclusive)", offset(&f.filter.FromOffset))
	fs.Func("to-offset", "only source offsets up to this `offset` (inclusive)", offset(&f.filter.ToOffset))
	when := func(dst *time.Time) func(string) error {
		return func(s string) error {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return fmt.Errorf("not an RFC 3339 time: %q", s)
			}
			*dst = t
			return nil
		}
	}
	fs.Func("since", "only letters written at or after this `time` (RFC 3339)", when(&f.filter.Since))
	fs.Func("until", "only letters written before this `time` (RFC 3339)", when(&f.filter.Until))
	return f
}

// resolve fills the file and log paths from the configuration.
func (f *dlqFlags) resolve(cfg config.Config) {
	if f.file == "" && cfg.DLQ.File != "-" {
		f.file = cfg.DLQ.File
	}
	if f.logPath == "" && f.file != "" {
		f.logPath = dlq.LogPath(f.file)
	}
}

// selection is the letters a dlq command works on.
type selection struct {
	from     string // where they were read, for messages
	letters  []dlq.Letter
	filtered int
	last     map[dlq.ID]dlq.LogEntry // the replay log's last entry per letter
	torn     []dlq.TornLine          // lines of the file skipped as unreadable
}

// read reads, dedupes and filters the letters and reads the replay log.
func (f *dlqFlags) read(ctx context.Context, cfg config.Config) (*selection, error) {
	s := &selection{}
	var all []dlq.Letter
	var err error
	if f.fromTopic {
		topic := cfg.DLQ.Topic
		if topic == "" || topic == "-" {
			return nil, &usageError{errors.New("-from-topic: dlq.topic is turned off in the configuration")}
		}
		if len(cfg.Kafka.Brokers) == 0 {
			return nil, &usageError{errors.New("-from-topic: kafka.brokers is not set (or KAFKA_BROKERS, -brokers)")}
		}
		s.from = "topic " + topic
		var kopts []kgo.Opt
		if kopts, err = kafkaOpts(cfg.Kafka); err != nil {
			return nil, err
		}
		if err = checkKafka(ctx, cfg.Kafka.Brokers, kopts); err != nil {
			return nil, err
		}
		// (ReadTopic adds the seed brokers again: the same list)
		all, err = dlq.ReadTopic(ctx, cfg.Kafka.Brokers, topic, append(kopts, kgo.ClientID(cfg.Kafka.ClientID+"-dlq-reader"))...)
	} else {
		if f.file == "" {
			return nil, &usageError{errors.New("-file: no dead-letter file (dlq.file is turned off; name one with -file or use -from-topic)")}
		}
		s.from = "file " + f.file
		all, s.torn, err = dlq.ReadFilesTorn(f.file)
	}
	if err != nil {
		return nil, err
	}
	if f.logPath != "" {
		entries, err := dlq.ReadLog(f.logPath)
		if err != nil {
			return nil, err
		}
		var replayed map[dlq.ID]dlq.LogEntry
		s.last, replayed = dlq.Latest(entries)
		if f.pending {
			kept := all[:0]
			for _, l := range all {
				if _, done := replayed[l.ID()]; !done {
					kept = append(kept, l)
				} else {
					s.filtered++
				}
			}
			all = kept
		}
	} else if f.pending {
		return nil, &usageError{errors.New("-pending: no replay log (name one with -log)")}
	}
	var filtered int
	s.letters, filtered = dlq.Select(all, f.filter)
	s.filtered += filtered
	return s, nil
}

// cmdDLQ runs `dlq ls`, `dlq show` and `dlq replay`.
func cmdDLQ(ctx context.Context, sub string, args []string, stdout, stderr io.Writer) error {
	switch sub {
	case "ls":
		return cmdDLQList(ctx, args, stdout, stderr)
	case "show":
		return cmdDLQShow(ctx, args, stdout, stderr)
	case "replay":
		return cmdDLQReplay(ctx, args, stdout, stderr)
	}
	return &usageError{fmt.Errorf("unknown command 'dlq %s' (want 'dlq ls', 'dlq show' or 'dlq replay')", sub)}
}

func cmdDLQList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("connector dlq ls", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := config.RegisterFlags(fs)
	df := registerDLQFlags(fs)
	if err := fs.Parse(args); err != nil {
		return &usageError{err}
	}
	cfg, _ := config.Load(cf, os.LookupEnv) // offline: only the dlq settings matter
	df.resolve(cfg)
	s, err := df.read(ctx, cfg)
	if err != nil {
		return err
	}
	if err := printLetters(stdout, s); err != nil {
		return err
	}
	replayed := 0
	for _, l := range s.letters {
		if e, ok := s.last[l.ID()]; ok && e.Outcome == dlq.Replayed {
			replayed++
		}
	}
	fmt.Fprintf(stdout, "%d dead letters (%s), %d replayed, %d filtered out\n", len(s.letters), s.from, replayed, s.filtered)
	if len(s.torn) > 0 {
		fmt.Fprintf(stderr, "warning: %d torn lines skipped (a crash mid-append leaves one; the letters around them are listed):\n", len(s.torn))
		for _, t := range s.torn {
			fmt.Fprintf(stderr, "  %s\n", t)
		}
	}
	return nil
}

func printLetters(w io.Writer, s *selection) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tPARTITION\tOFFSET\tCLASS\tHOPS\tFAILED\tREPLAYED\tERROR")
	for _, l := range s.letters {
		replayed := "-"
		if e, ok := s.last[l.ID()]; ok {
			replayed = fmt.Sprintf("%s %s (%s)", e.ReplayedAt.Format(time.RFC3339), e.Outcome, e.Target)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\t%s\t%s\n", l.Topic, l.Partition, l.Offset, l.ErrorClass, l.Hops(),
			l.LastFailure.Format(time.RFC3339), replayed, oneLine(l.Error, 100))
	}
	return tw.Flush()
}

// oneLine shortens s to n runes on one line, for a table cell.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

func cmdDLQShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("connector dlq show", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := config.RegisterFlags(fs)
	df := registerDLQFlags(fs)
	offset := int64(-1)
	fs.Int64Var(&offset, "offset", -1, "the letter's source `offset`")
	if err := fs.Parse(args); err != nil {
		return &usageError{err}
	}
	if offset >= 0 {
		df.filter.FromOffset, df.filter.ToOffset = &offset, &offset
	}
	if df.filter.Topic == "" || df.filter.FromOffset == nil && df.filter.ToOffset == nil {
		return &usageError{errors.New("dlq show: name the letter with -topic, -offset and, if several partitions hold it, -partition")}
	}
	if df.filter.FromOffset == nil {
		df.filter.FromOffset = df.filter.ToOffset
	}
	if df.filter.ToOffset == nil {
		df.filter.ToOffset = df.filter.FromOffset
	}
	cfg, _ := config.Load(cf, os.LookupEnv)
	df.resolve(cfg)
	s, err := df.read(ctx, cfg)
	if err != nil {
		return err
	}
	if len(s.letters) == 0 {
		return fmt.Errorf("no dead letter of topic %s at offsets %d to %d in %s (filters included)", df.filter.Topic, *df.filter.FromOffset, *df.filter.ToOffset, s.from)
	}
	var replays []dlq.LogEntry
	if df.logPath != "" {
		all, err := dlq.ReadLog(df.logPath)
		if err != nil {
			return err
		}
		replays = all
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	for _, l := range s.letters {
		var mine []dlq.LogEntry
		for _, e := range replays {
			if e.ID() == l.ID() {
				mine = append(mine, e)
			}
		}
		if err := enc.Encode(showLetter(l, mine)); err != nil {
			return err
		}
	}
	return nil
}

// shown is a letter as `dlq show` prints it: bytes as text when they are
// valid UTF-8, else base64, saying which.
type shown struct {
	Topic        string         `json:"topic"`
	Partition    int32          `json:"partition"`
	Offset       int64          `json:"offset"`
	Timestamp    time.Time      `json:"timestamp"`
	Key          *bytesField    `json:"key"`
	Value        *bytesField    `json:"value"`
	Headers      []shownHeader  `json:"headers,omitempty"`
	ErrorClass   string         `json:"error_class"`
	Error        string         `json:"error"`
	Attempts     int            `json:"attempts"`
	Hops         int            `json:"hops"`
	FirstFailure time.Time      `json:"first_failure"`
	LastFailure  time.Time      `json:"last_failure"`
	Instance     string         `json:"instance"`
	Replays      []dlq.LogEntry `json:"replays,omitempty"`
}

type bytesField struct {
	Encoding string `json:"encoding"` // text or base64
	Data     string `json:"data"`
}

type shownHeader struct {
	Key   string      `json:"key"`
	Value *bytesField `json:"value"`
}

func showBytes(b []byte) *bytesField {
	if b == nil {
		return nil
	}
	if utf8.Valid(b) {
		return &bytesField{Encoding: "text", Data: string(b)}
	}
	return &bytesField{Encoding: "base64", Data: base64.StdEncoding.EncodeToString(b)}
}

func showLetter(l dlq.Letter, replays []dlq.LogEntry) shown {
	s := shown{
		Topic: l.Topic, Partition: l.Partition, Offset: l.Offset, Timestamp: l.Timestamp,
		Key: showBytes(l.Key), Value: showBytes(l.Value), ErrorClass: l.ErrorClass, Error: l.Error,
		Attempts: l.Attempts, Hops: l.Hops(), FirstFailure: l.FirstFailure, LastFailure: l.LastFailure,
		Instance: l.Instance, Replays: replays,
	}
	for _, h := range l.Headers {
		s.Headers = append(s.Headers, shownHeader{Key: h.Key, Value: showBytes(h.Value)})
	}
	return s
}

// failedAgainError is the exit of a replay in which records failed again:
// exit status 1, after the account is printed.
type failedAgainError struct {
	n     int
	first dlq.Failure
}

func (e *failedAgainError) Error() string {
	return fmt.Sprintf("%d replayed records failed again (first: %s: %s)", e.n, e.first.ID, e.first.Err)
}

// replayFlags are the flags of `dlq replay` besides the shared ones.
type replayFlags struct {
	to         string
	dryRun     bool
	maxHops    int
	failedPath string
	batch      int
}

func registerReplayFlags(fs *flag.FlagSet) *replayFlags {
	f := &replayFlags{}
	fs.StringVar(&f.to, "to", "", "`target` of the replay: source (produce to the source topic) or sink (write straight to the tables)")
	fs.BoolVar(&f.dryRun, "dry-run", false, "list what would be replayed, change nothing")
	fs.IntVar(&f.maxHops, "max-hops", dlq.DefaultMaxHops, "skip letters replayed `n` times already")
	fs.StringVar(&f.failedPath, "failed", "", "append the letters that fail again to this NDJSON `file` (mode 0600)")
	fs.IntVar(&f.batch, "batch", 0, "letters per transaction or produce call (default coordinator.batch_size)")
	return f
}

// target checks the flags, every problem at once, and returns the target.
func (f *replayFlags) target() (dlq.Target, error) {
	var problems []string
	target := dlq.Target(f.to)
	if target != dlq.ToSource && target != dlq.ToSink {
		problems = append(problems, fmt.Sprintf("-to: want source or sink, got %q", f.to))
	}
	if f.maxHops <= 0 {
		problems = append(problems, fmt.Sprintf("-max-hops: must be positive, got %d", f.maxHops))
	}
	if f.batch < 0 {
		problems = append(problems, fmt.Sprintf("-batch: must not be negative, got %d", f.batch))
	}
	if len(problems) > 0 {
		return "", &usageError{errors.New(strings.Join(problems, "\n"))}
	}
	return target, nil
}

// cmdDLQReplay runs `dlq replay`: it reads the letters, checks that their
// target can take them, opens the replay log (and the file of those that
// fail again), connects to the target and replays, printing progress.
func cmdDLQReplay(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	fs := flag.NewFlagSet("connector dlq replay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cf := config.RegisterFlags(fs)
	df := registerDLQFlags(fs)
	rf := registerReplayFlags(fs)
	if err := fs.Parse(args); err != nil {
		return &usageError{err}
	}
	target, err := rf.target()
	if err != nil {
		return err
	}
	cfg, err := config.Load(cf, os.LookupEnv)
	if err != nil {
		return &usageError{fmt.Errorf("invalid configuration:\n%w", err)}
	}
	df.resolve(cfg)
	if df.logPath == "" && !rf.dryRun {
		return &usageError{errors.New("-log: no replay log (dlq.file is turned off): name one with -log")}
	}
	if rf.batch == 0 {
		rf.batch = cfg.Coordinator.BatchSize
	}
	s, err := df.read(ctx, cfg)
	if err != nil {
		return err
	}
	eligible, atLimit := dlq.Eligible(s.letters, rf.maxHops)
	if target == dlq.ToSink {
		if err := checkSinkTopics(eligible, cfg.Topics); err != nil {
			return err
		}
	}
	skipped := fmt.Sprintf("skipped %d (hop limit %d, filtered %d)", len(atLimit)+s.filtered, len(atLimit), s.filtered)
	if rf.dryRun {
		if err := printLetters(stdout, &selection{letters: eligible, last: s.last}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "dry run: would replay %d from %s to %s, %s\n", len(eligible), s.from, target, skipped)
		return nil
	}

	rc := dlq.ReplayConfig{Target: target, ExactlyOnce: exactlyOnceTopics(cfg), MaxHops: rf.maxHops, BatchSize: rf.batch}
	closeLater := func(c interface{ Close() error }) {
		prev := err
		err = errors.Join(prev, c.Close())
	}
	if rc.Log, err = dlq.OpenAppend(df.logPath); err != nil {
		return err
	}
	defer closeLater(rc.Log)
	if rf.failedPath != "" {
		if rc.Failed, err = dlq.OpenAppend(rf.failedPath); err != nil {
			return err
		}
		defer closeLater(rc.Failed)
	}
	release, err := connectReplayTarget(ctx, cfg, &rc, stderr)
	if err != nil {
		return err
	}
	defer release()

	res, rerr := replayWithProgress(ctx, s.letters, rc, len(eligible), stderr)
	return reportReplay(res, rerr, s.from, rc.Failed, skipped, stdout, stderr)
}

// checkSinkTopics says every topic of letters that cannot go straight to
// the sink (no table configured for it, or exactly_once) before anything
// is written.
func checkSinkTopics(letters []dlq.Letter, topics []config.Topic) error {
	modes := map[string]config.Mode{}
	for _, t := range topics {
		modes[t.Name] = t.Mode
	}
	var unknown, exactly []string
	for _, l := range letters {
		switch m, ok := modes[l.Topic]; {
		case !ok && !slices.Contains(unknown, l.Topic):
			unknown = append(unknown, l.Topic)
		case m == config.ModeExactlyOnce && !slices.Contains(exactly, l.Topic):
			exactly = append(exactly, l.Topic)
		}
	}
	var errs []error
	if len(unknown) > 0 {
		errs = append(errs, fmt.Errorf("topic %s: no table in the configuration (topics); filter with -topic", strings.Join(unknown, ", ")))
	}
	if len(exactly) > 0 {
		errs = append(errs, fmt.Errorf("topic %s: %w", strings.Join(exactly, ", "), dlq.ErrExactlyOnce))
	}
	return errors.Join(errs...)
}

// connectReplayTarget connects rc to its target: a producer that sends each
// record back to the partition it came from, or the sink on a pool of its
// own. release closes what it opened.
func connectReplayTarget(ctx context.Context, cfg config.Config, rc *dlq.ReplayConfig, stderr io.Writer) (release func(), err error) {
	switch rc.Target {
	case dlq.ToSource:
		if len(cfg.Kafka.Brokers) == 0 {
			return nil, &usageError{errors.New("-to source: kafka.brokers is not set")}
		}
		kopts, err := kafkaOpts(cfg.Kafka)
		if err != nil {
			return nil, err
		}
		if err := checkKafka(ctx, cfg.Kafka.Brokers, kopts); err != nil {
			return nil, err
		}
		cl, err := kgo.NewClient(append(kopts, kgo.RequiredAcks(kgo.AllISRAcks()),
			kgo.ClientID(cfg.Kafka.ClientID+"-dlq-replay"), kgo.RecordPartitioner(kgo.ManualPartitioner()),
			kgo.ProducerLinger(0))...)
		if err != nil {
			return nil, fmt.Errorf("creating the replay producer: %w", err)
		}
		rc.Producer = cl
		return cl.Close, nil
	case dlq.ToSink:
		pool, err := newPool(ctx, cfg)
		if err != nil {
			return nil, err
		}
		sw, err := newSink(pool, cfg, newLogger(cfg.Log, stderr))
		if err != nil {
			pool.Close()
			return nil, err
		}
		rc.Sink = sw
		return pool.Close, nil
	}
	return func() {}, nil
}

// replayWithProgress replays letters as rc says, printing to stderr every
// second how far it has come of the total eligible.
func replayWithProgress(ctx context.Context, letters []dlq.Letter, rc dlq.ReplayConfig, total int, stderr io.Writer) (dlq.Result, error) {
	var done, failed atomic.Int64
	rc.Progress = func(r dlq.Result) {
		done.Store(int64(r.Replayed))
		failed.Store(int64(len(r.FailedAgain)))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if n := done.Load(); n > 0 {
					fmt.Fprintf(stderr, "dlq replay: %d of %d replayed to %s, %d failed again\n", n, total, rc.Target, failed.Load())
				}
			}
		}
	})
	res, err := dlq.Replay(ctx, letters, rc)
	close(stop)
	wg.Wait()
	return res, err
}

// reportReplay prints the account of a replay and returns its exit: the
// replay's error, or a failedAgainError naming where the letters that
// failed again are (from, and the failed file when there is one).
func reportReplay(res dlq.Result, rerr error, from string, failedFile *dlq.AppendFile, skipped string, stdout, stderr io.Writer) error {
	for _, f := range res.FailedAgain {
		fmt.Fprintf(stderr, "failed again: %s: %s: %s\n", f.ID, f.Class, f.Err)
	}
	fmt.Fprintf(stdout, "replayed %d, failed again %d, %s\n", res.Replayed, len(res.FailedAgain), skipped)
	if rerr != nil {
		return rerr
	}
	if n := len(res.FailedAgain); n > 0 {
		where := "they stay in " + from
		if failedFile != nil {
			where += " and are in " + failedFile.Path()
		}
		return fmt.Errorf("%w; %s", &failedAgainError{n: n, first: res.FailedAgain[0]}, where)
	}
	return nil
}
