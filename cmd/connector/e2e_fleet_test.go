package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/loadgen"
	"github.com/ktsink/connector/source"
)

// rollResult is what one rolling restart of a process cost.
type rollResult struct {
	proc    string
	stall   time.Duration // the longest time a partition had no landing around the restart
	moved   int           // partitions landed by another process than before, during the restart or just after
	settled time.Duration // from the SIGTERM until the restarted process landed a batch
}

// TestEndToEndRollingRestart restarts three processes one at a time under
// a steady load (SIGTERM, then started again), then crashes the first one
// (SIGKILL, started again), once with static membership (kafka.instance_id
// per process) and once without, over an exactly_once topic, and measures
// per restart the longest stall of a partition (the gap between two
// landings of it, all processes together) and the partitions that moved.
// It prints both. With static membership a restarted process takes its
// own partitions back, the crashed one too without waiting for its old
// session to expire: nothing moves and the longest stall stays under 5 s.
// Without, the crashed process's partitions wait for its old session (8 s)
// to expire. Either way every record lands exactly once.
func TestEndToEndRollingRestart(t *testing.T) {
	results := map[string][]rollResult{}
	for _, static := range []bool{true, false} {
		name := map[bool]string{true: "static", false: "dynamic"}[static]
		t.Run(name, func(t *testing.T) { results[name] = rollingRestart(t, static) })
	}
	var b strings.Builder
	fmt.Fprintf(&b, "rolling restart of 3 processes over 6 partitions at 2,000 records/s:\n")
	fmt.Fprintf(&b, "%-8s %-14s %14s %7s %16s\n", "members", "restart of", "longest stall", "moved", "back at work in")
	for _, name := range []string{"static", "dynamic"} {
		for _, r := range results[name] {
			fmt.Fprintf(&b, "%-8s %-14s %14s %7d %16s\n", name, r.proc, r.stall.Round(10*time.Millisecond), r.moved, r.settled.Round(10*time.Millisecond))
		}
	}
	t.Log(b.String())
	for _, r := range results["static"] {
		if r.stall >= 5*time.Second || r.moved != 0 {
			t.Errorf("static membership, restart of %s: longest stall %s, %d partitions moved; want under 5s and none", r.proc, r.stall, r.moved)
		}
	}
}

// rollingRestart runs one phase of TestEndToEndRollingRestart.
func rollingRestart(t *testing.T, static bool) []rollResult {
	e := newEnv(t, 6)
	want := map[barKey]loadgen.Bar{}
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		e.produceAt(loadgen.NewBars(41, 300, 0), 60_000, 2000, want)
	}()
	names := []string{"c0", "c1", "c2"}
	cfgs := map[string]string{}
	procs := map[string]*proc{}
	for _, n := range names {
		o := topicOpts{mode: "exactly_once", appendOnly: true, workers: 2, batch: 500, session: "8s"}
		if static {
			o.instance = "roll-" + n
		}
		cfgs[n] = e.writeConfig(n, o)
		procs[n] = e.start(cfgs[n])
	}
	for _, n := range names {
		procs[n].waitLog(t, "batch landed", time.Minute)
	}
	e.waitBalanced(3, 6)
	checkMembership(t, procs["c0"], map[bool]string{true: "roll-c0"}[static])
	var terms []time.Time
	var all []*proc // every process started, for their landings
	for _, n := range names {
		all = append(all, procs[n])
	}
	// each process in turn: SIGTERM and start again; then the first one
	// SIGKILLed and started again (a crash)
	order := append(slices.Clone(names), names[0])
	settled := make([]time.Duration, len(order))
	for i, n := range order {
		terms = append(terms, time.Now())
		if i < len(names) {
			if err := procs[n].stop(t, 30*time.Second); err != nil {
				t.Fatalf("%s: %v", n, err)
			}
		} else {
			procs[n].kill()
		}
		procs[n] = e.start(cfgs[n])
		procs[n].waitLog(t, "batch landed", time.Minute)
		settled[i] = time.Since(terms[i])
		all = append(all, procs[n])
		e.waitBalanced(3, 6)
	}
	select {
	case <-produced:
		t.Fatal("the stream ended before the last restart settled: the restarts were not under load")
	default:
	}
	<-produced
	e.waitCaughtUp(3*time.Minute, procs["c0"], procs["c1"], procs["c2"])
	for _, n := range names {
		if err := procs[n].stop(t, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	e.checkTable(want) // each record once: exactly_once over the restarts

	landings := landingsByPartition(t, all, names)
	out := make([]rollResult, len(order))
	for i, n := range order {
		out[i] = rollResult{proc: n, settled: settled[i]}
		if i >= len(names) {
			out[i].proc = n + " (SIGKILL)"
		}
		from := terms[i].Add(-500 * time.Millisecond)
		for _, ls := range landings {
			stall, moved := aroundRestart(ls, from, terms[i].Add(settled[i]))
			out[i].stall = max(out[i].stall, stall)
			if moved {
				out[i].moved++
			}
		}
	}
	return out
}

// landing is one batch of one partition landed, by a process (its config
// name), at the end of its write.
type landing struct {
	proc string
	at   time.Time
}

// landingsByPartition reads the batch-landed lines of every process
// started (procs[i] runs the config names[i % len(names)]: the three
// first, then each restart in order), per partition, in time order.
func landingsByPartition(t *testing.T, procs []*proc, names []string) map[string][]landing {
	t.Helper()
	out := map[string][]landing{}
	for i, p := range procs {
		for _, m := range landedLine.FindAllStringSubmatch(p.logText(), -1) {
			end, err := strconv.ParseInt(m[3], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			for _, sp := range strings.Split(m[1], ";") {
				tp := sp[:strings.IndexByte(sp, '[')]
				out[tp] = append(out[tp], landing{proc: names[i%len(names)], at: time.Unix(0, end)})
			}
		}
	}
	for _, ls := range out {
		slices.SortFunc(ls, func(a, b landing) int { return a.at.Compare(b.at) })
	}
	if len(out) != 6 {
		t.Fatalf("landings cover %d partitions, want 6", len(out))
	}
	return out
}

// aroundRestart returns the longest gap between two landings of a
// partition that ends after from and starts before until (the restart's
// window), and whether another process than the one landing it before the
// window landed it in the window or in the two seconds after (it moved,
// if only for a while).
func aroundRestart(ls []landing, from, until time.Time) (time.Duration, bool) {
	var stall time.Duration
	for j := 1; j < len(ls); j++ {
		prev, cur := ls[j-1], ls[j]
		if cur.at.After(from) && prev.at.Before(until) {
			stall = max(stall, cur.at.Sub(prev.at))
		}
	}
	before, moved := "", false
	for _, l := range ls {
		switch {
		case l.at.Before(from):
			before = l.proc
		case before != "" && l.at.Before(until.Add(2*time.Second)) && l.proc != before:
			moved = true
		}
	}
	return stall, moved
}

// waitBalanced waits until the group has members members, each assigned
// partitions/members partitions of the topic, and then two seconds more
// (the cooperative rebalance's second round done, and landings since).
func (e *env) waitBalanced(members, partitions int) {
	t := e.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		groups, err := e.adm.DescribeGroups(ctx, e.group)
		if err != nil {
			t.Fatalf("describing the group: %v", err)
		}
		g := groups[e.group]
		ok := g.State == "Stable" && len(g.Members) == members
		for _, m := range g.Members {
			n := 0
			if a, ok := m.Assigned.AsConsumer(); ok {
				for _, tp := range a.Topics {
					n += len(tp.Partitions)
				}
			}
			ok = ok && n == partitions/members
		}
		if ok {
			time.Sleep(2 * time.Second)
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("the group did not settle with %d members of %d partitions each: %s, %d members", members, partitions/members, g.State, len(g.Members))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkMembership checks what /status says of the process's place in the
// group: the protocol, its static id (none: dynamic), a current member.
func checkMembership(t *testing.T, p *proc, instance string) {
	t.Helper()
	body, err := httpGet(p.statusAddr(t), "/status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Group source.Membership `json:"consumer_group"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if g := st.Group; g.Protocol != "classic" || g.InstanceID != instance || !g.Member {
		t.Fatalf("/status consumer_group %+v; want protocol classic, instance id %q, a member", g, instance)
	}
	if !strings.Contains(p.logText(), "joining the consumer group") {
		t.Fatal("the start-up log does not say which group protocol the connector runs")
	}
}
