package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/ktsink/connector/internal/testenv"
	"github.com/ktsink/connector/loadgen"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// modelConfig writes a config whose topics section is topics (YAML, each
// line indented for the list) and returns its path.
func (e *env) modelConfig(name, topics string) string {
	e.t.Helper()
	return e.modelConfigWith(name, "", topics)
}

// modelConfigWith is modelConfig with more postgres settings (YAML lines
// indented for that section).
func (e *env) modelConfigWith(name, postgres, topics string) string {
	e.t.Helper()
	cfg := fmt.Sprintf(`kafka:
  group: %s
postgres:
  schema: %s
%scoordinator:
  workers: 2
  batch_size: 2000
wal:
  path: %s
dlq:
  topic: "-"
  file: %s
metrics:
  addr: "127.0.0.1:0"
  queue_poll: 50ms
topics:
%s`, e.group, e.schema, postgres, filepath.Join(e.dir, name+".wal"), filepath.Join(e.dir, name+"-dlq.ndjson"), topics)
	p := filepath.Join(e.dir, name+".yaml")
	if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// waitTopicsCaughtUp waits until the group's committed offsets reach the
// end of every partition of topics.
func (e *env) waitTopicsCaughtUp(topics []string, timeout time.Duration, p *proc) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		if p.exited() {
			e.t.Fatalf("connector exited early (%v); log:\n%s", p.err, tail(p.logText(), 40))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ends, err1 := e.adm.ListEndOffsets(ctx, topics...)
		committed, err2 := e.adm.FetchOffsets(ctx, e.group)
		cancel()
		if err := errors.Join(err1, err2); err != nil {
			last = err.Error()
		} else {
			var behind []string
			ends.Each(func(lo kadm.ListedOffset) {
				c, ok := committed.Lookup(lo.Topic, lo.Partition)
				if (!ok && lo.Offset > 0) || (ok && c.At != lo.Offset) { // an empty partition has nothing to commit
					behind = append(behind, fmt.Sprintf("%s/%d", lo.Topic, lo.Partition))
				}
			})
			if len(behind) == 0 {
				return
			}
			last = "behind: " + strings.Join(behind, " ")
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.t.Fatalf("group %s did not catch up within %s: %s", e.group, timeout, last)
}

func (e *env) produceGen(topic string, g loadgen.Generator, n int64) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := loadgen.Produce(ctx, e.cl, g, loadgen.Options{Topic: topic, Count: n}); err != nil {
		e.t.Fatal(err)
	}
}

// compareRows checks that the table's rows, scanned by scan and keyed by
// key, are exactly want (compared with reflect.DeepEqual after norm).
func compareRows[T any](t *testing.T, db *pgx.Conn, query string, scan func(pgx.Rows) (T, error), key func(*T) string, norm func(*T), want map[string]T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := db.Query(ctx, query)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (T, error) { return scan(r.(pgx.Rows)) })
	if err != nil {
		t.Fatal(err)
	}
	bad := 0
	for _, g := range got {
		norm(&g)
		w, ok := want[key(&g)]
		norm(&w)
		if !ok || !reflect.DeepEqual(g, w) {
			bad++
			if bad <= 3 {
				gj, _ := json.Marshal(g)
				wj, _ := json.Marshal(w)
				t.Errorf("row %s:\n got  %s\n want %s (present %v)", key(&g), gj, wj, ok)
			}
		}
	}
	if len(got) != len(want) || bad > 0 {
		t.Fatalf("%d rows (%d differ), want %d", len(got), bad, len(want))
	}
}

// TestEndToEndBuiltInKindsRoundTrip produces every built-in kind with
// loadgen, updates included, each to its own topic, and checks that every
// table holds exactly the last record of each key, field by field:
// timestamps in several offsets with fractional seconds, dates, nulls,
// jsonb, text arrays and escaped strings.
func TestEndToEndBuiltInKindsRoundTrip(t *testing.T) {
	e := newEnv(t, 3)
	topics := map[string]string{"bars": e.topic}
	for _, k := range []string{"options", "fundamentals", "news"} {
		topics[k] = testenv.NewTopic(t, e.brokers, 3)
	}
	const n = 3000

	bars := loadgen.NewBars(21, 40, 0.3)
	wantBars := map[string]loadgen.Bar{}
	for g, i := bars.Clone(), 0; i < n; i++ {
		b := g.Next()
		wantBars[barModel.key(&b)] = b
	}
	e.produceGen(topics["bars"], bars, n)

	opts := loadgen.NewOptions(22, 4, 0.3)
	wantOpts := map[string]loadgen.Option{}
	optKey := optionModel.key
	for g, i := opts.Clone(), 0; i < n; i++ {
		o := g.Next()
		wantOpts[optKey(&o)] = o
	}
	e.produceGen(topics["options"], opts, n)

	funds := loadgen.NewFundamentals(23, 50, 0.3)
	wantFunds := map[string]loadgen.Fundamental{}
	fundKey := fundamentalModel.key
	for g, i := funds.Clone(), 0; i < n; i++ {
		f := g.Next()
		wantFunds[fundKey(&f)] = f
	}
	e.produceGen(topics["fundamentals"], funds, n)

	news := loadgen.NewNews(24, 30, 0.3)
	wantNews := map[string]loadgen.NewsItem{}
	for g, i := news.Clone(), 0; i < n; i++ {
		it := g.Next()
		wantNews[it.ID] = it
	}
	e.produceGen(topics["news"], news, n)
	for name, size := range map[string]int{"bars": len(wantBars), "options": len(wantOpts), "fundamentals": len(wantFunds), "news": len(wantNews)} {
		if size >= n {
			t.Fatalf("%s: the generator made no updates", name)
		}
	}

	var cfg strings.Builder
	for _, k := range []string{"bars", "options", "fundamentals", "news"} {
		fmt.Fprintf(&cfg, "  - name: %s\n    kind: %s\n    table: %s\n", topics[k], k, k)
	}
	p := e.start(e.modelConfig("kinds", cfg.String()))
	e.waitTopicsCaughtUp(slices.Collect(mapValues(topics)), 3*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatalf("connector exit: %v", err)
	}

	t.Run("bars", func(t *testing.T) { compareModel(t, e.db, barModel, "bars", wantBars) })
	t.Run("options", func(t *testing.T) { compareModel(t, e.db, optionModel, "options", wantOpts) })
	t.Run("fundamentals", func(t *testing.T) { compareModel(t, e.db, fundamentalModel, "fundamentals", wantFunds) })
	t.Run("news", func(t *testing.T) { compareModel(t, e.db, newsModel, "news", wantNews) })
}

// compareModel is compareRows of a built-in kind's table.
func compareModel[T any](t *testing.T, db *pgx.Conn, m kindModel[T], table string, want map[string]T) {
	t.Helper()
	compareRows(t, db, fmt.Sprintf(m.query, pgx.Identifier{table}.Sanitize()),
		func(r pgx.Rows) (v T, err error) { return v, m.scan(r, &v) }, m.key, m.norm, want)
}

func mapValues(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}

// iotMapping is a generic mapping of IoT readings with a nested object.
const iotMapping = `  - name: %s
    table: readings
    key: [device_id, ts]
    time_column: ts
    tombstones: %s
    columns:
      - {name: device_id, type: text, path: device.id}
      - {name: ts, type: timestamptz, path: at, time_format: epoch_ms}
      - {name: site, type: varchar(16), path: device.site}
      - {name: temp_c, type: "numeric(6,2)", path: readings.temperature}
      - {name: humidity, type: real, path: readings.humidity}
      - {name: battery, type: smallint, path: device.battery}
      - {name: seq, type: bigint}
      - {name: ok, type: boolean, path: status.ok}
      - {name: tags, type: "text[]"}
      - {name: raw, type: jsonb, path: readings}
      - {name: seen_at, type: timestamptz, path: status.seen}
`

// TestEndToEndGenericMapping lands a topic the connector knows nothing of
// through a mapping from the config: nested members, epoch milliseconds,
// numeric, real, smallint, boolean, text[], jsonb, a missing member (NULL),
// and a record whose member has the wrong type (a dead letter naming it).
func TestEndToEndGenericMapping(t *testing.T) {
	e := newEnv(t, 2)
	recs := []string{
		`{"device": {"id": "dev-1", "site": "north", "battery": 87}, "at": 1767364200123, "seq": 1,
		  "readings": {"temperature": 21.25, "humidity": 40.5}, "status": {"ok": true, "seen": "2026-01-02T14:00:00Z"},
		  "tags": ["roof", "east"]}`,
		`{"device": {"id": "dev-2"}, "at": 1767364260000, "seq": 2, "readings": {"temperature": -3.1}, "status": {"ok": false}}`,
		`{"device": {"id": "dev-1", "site": "north", "battery": 86}, "at": 1767364200123, "seq": 3,
		  "readings": {"temperature": 21.5, "humidity": 41}, "status": {"ok": true, "seen": "2026-01-02T09:30:00.123456-05:00"}, "tags": []}`,
		`{"device": {"id": "dev-3"}, "at": "not a number", "seq": 4}`,
	}
	for i, v := range recs {
		e.cl.Produce(context.Background(), &kgo.Record{Topic: e.topic, Key: []byte(fmt.Sprint(i % 2)), Value: []byte(v)}, nil)
	}
	if err := e.cl.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := e.start(e.modelConfig("iot", fmt.Sprintf(iotMapping, e.topic, "skip")))
	e.waitTopicsCaughtUp([]string{e.topic}, 2*time.Minute, p)
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	rows, err := e.db.Query(ctx, `SELECT device_id, ts, site, temp_c::text, humidity, battery, seq, ok, tags, raw::text, seen_at
FROM readings ORDER BY device_id`)
	if err != nil {
		t.Fatal(err)
	}
	type reading struct {
		Device   string
		TS       time.Time
		Site     *string
		Temp     *string
		Humidity *float32
		Battery  *int16
		Seq      *int64
		OK       *bool
		Tags     []string
		Raw      *string
		SeenAt   *time.Time
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[reading])
	if err != nil {
		t.Fatal(err)
	}
	site, t1, t2 := "north", "21.50", "-3.10"
	hum1 := float32(41)
	bat1, seq1, seq2 := int16(86), int64(3), int64(2)
	okTrue, okFalse := true, false
	seen := time.Date(2026, 1, 2, 14, 30, 0, 123456000, time.UTC)
	raw1, raw2 := `{"humidity": 41, "temperature": 21.5}`, `{"temperature": -3.1}`
	want := []reading{
		{Device: "dev-1", TS: time.UnixMilli(1767364200123), Site: &site, Temp: &t1, Humidity: &hum1, Battery: &bat1, Seq: &seq1,
			OK: &okTrue, Tags: []string{}, Raw: &raw1, SeenAt: &seen},
		{Device: "dev-2", TS: time.UnixMilli(1767364260000), Temp: &t2, Seq: &seq2, OK: &okFalse, Raw: &raw2},
	}
	for i := range got {
		got[i].TS = got[i].TS.UTC()
		if got[i].SeenAt != nil {
			*got[i].SeenAt = got[i].SeenAt.UTC()
		}
	}
	for i := range want {
		want[i].TS = want[i].TS.UTC()
	}
	if !reflect.DeepEqual(got, want) {
		gj, _ := json.MarshalIndent(got, "", " ")
		wj, _ := json.MarshalIndent(want, "", " ")
		t.Fatalf("readings:\n got %s\nwant %s", gj, wj)
	}
	dl, err := os.ReadFile(filepath.Join(e.dir, "iot-dlq.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(string(dl), "\n"); lines != 1 || !strings.Contains(string(dl), `field \"at\"`) {
		t.Fatalf("dead letters (want one, naming field \"at\"):\n%s", dl)
	}
}

// TestEndToEndMappingMisfitFailsAtStart: a mapping that names a column the
// existing table lacks, or maps a column onto a type that cannot take its
// values, or uses a type no mapping can fill, stops the connector at start
// with exit status 2 and every problem named by topic and column.
func TestEndToEndMappingMisfitFailsAtStart(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	if _, err := e.db.Exec(ctx, `CREATE TABLE readings (device_id text, ts timestamptz, site text, temp_c numeric,
	humidity real, battery smallint, seq bigint, ok timestamptz, tags text[], raw jsonb, PRIMARY KEY (device_id, ts))`); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		mapping string
		want    []string
	}{
		{
			name:    "missing column and impossible type",
			mapping: fmt.Sprintf(iotMapping, e.topic, "skip"),
			want: []string{
				fmt.Sprintf(`topic %s, table %s.readings: column "seen_at" is missing`, e.topic, e.schema),
				fmt.Sprintf(`topic %s, table %s.readings: column "ok" is timestamp with time zone, which cannot take boolean values`, e.topic, e.schema),
			},
		},
		{
			name:    "type no mapping fills",
			mapping: strings.Replace(fmt.Sprintf(iotMapping, e.topic, "skip"), "type: bigint", "type: point", 1),
			want:    []string{fmt.Sprintf(`topic %s, table readings): column "seq": type "point" is not one a mapping can fill`, e.topic)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			exe, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(exe, "run", "-config", e.modelConfig("misfit", tt.mapping))
			cmd.Env = append(os.Environ(), "KTSINK_E2E_MAIN=1", "KAFKA_BROKERS="+strings.Join(e.brokers, ","), "DATABASE_URL="+e.dsn)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("connector: %v, want exit status 2; output:\n%s", err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
	var cols int
	if err := e.db.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'readings'`, e.schema).Scan(&cols); err != nil || cols != 10 {
		t.Fatalf("the existing table was changed: %d columns, %v", cols, err)
	}
}

// TestEndToEndTombstones: on a topic whose tombstones delete, a null value
// deletes the row of its key (here a plain-string news id), in offset order
// with the upserts around it; on a topic whose tombstones are skipped they
// change nothing. Both are counted in ktsink_tombstones_total.
func TestEndToEndTombstones(t *testing.T) {
	// one partition: the keys "n-3" and `"n-3"` name the same row but hash
	// to different partitions, and only one partition is in offset order
	e := newEnv(t, 1)
	barsTopic := testenv.NewTopic(t, e.brokers, 2)
	ctx := context.Background()
	produce := func(topic, key string, value []byte) {
		e.cl.Produce(ctx, &kgo.Record{Topic: topic, Key: []byte(key), Value: value}, func(_ *kgo.Record, err error) {
			if err != nil {
				t.Error(err)
			}
		})
	}
	g := loadgen.NewNews(31, 5, 0)
	items := map[string]loadgen.NewsItem{}
	for range 4 {
		it := g.Next()
		items[it.ID] = it
		produce(e.topic, it.ID, it.JSON())
	}
	produce(e.topic, "n-1", nil) // deleted
	produce(e.topic, "n-2", nil) // deleted, then written again
	again := items["n-2"]
	again.Headline = "written again"
	produce(e.topic, "n-2", again.JSON())
	produce(e.topic, `"n-3"`, nil) // a JSON string key works too
	bars := loadgen.NewBars(32, 2, 0)
	for range 2 {
		b := bars.Next()
		produce(barsTopic, b.Symbol, b.JSON(nil))
		produce(barsTopic, b.Symbol, nil) // skipped
	}
	if err := e.cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	p := e.start(e.modelConfig("tomb", fmt.Sprintf(`  - name: %s
    kind: news
    table: news
    tombstones: delete
  - name: %s
    kind: bars
    table: bars
`, e.topic, barsTopic)))
	e.waitTopicsCaughtUp([]string{e.topic, barsTopic}, 2*time.Minute, p)
	metrics, err := httpGet(p.statusAddr(t), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.stop(t, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	rows, err := e.db.Query(ctx, "SELECT id, headline FROM news ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var id, headline string
	if _, err := pgx.ForEachRow(rows, []any{&id, &headline}, func() error {
		got = append(got, id+": "+headline)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"n-0: " + items["n-0"].Headline, "n-2: written again"}
	if !slices.Equal(got, want) {
		t.Errorf("news rows %q, want %q", got, want)
	}
	var nBars int
	if err := e.db.QueryRow(ctx, "SELECT count(*) FROM bars").Scan(&nBars); err != nil || nBars != 2 {
		t.Errorf("bars has %d rows (%v), want 2: skipped tombstones delete nothing", nBars, err)
	}
	for _, w := range []struct {
		topic, action string
		n             int
	}{{e.topic, "deleted", 3}, {e.topic, "skipped", 0}, {barsTopic, "skipped", 2}, {barsTopic, "deleted", 0}} {
		line := ""
		for _, l := range strings.Split(metrics, "\n") {
			if strings.HasPrefix(l, "ktsink_tombstones_total{") && strings.Contains(l, `action="`+w.action+`"`) && strings.Contains(l, `topic="`+w.topic+`"`) {
				line = l
			}
		}
		if !strings.HasSuffix(line, fmt.Sprintf(" %d", w.n)) {
			t.Errorf("ktsink_tombstones_total{topic=%q,action=%q}: line %q, want %d", w.topic, w.action, line, w.n)
		}
	}
}
