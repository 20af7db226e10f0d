// Command connector streams Kafka topics into TimescaleDB (or plain
// PostgreSQL) tables, with a write-ahead checkpoint, dead letters and
// backpressure. Run `connector help` for the subcommands.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal the connector drains; a second one exits
		// at once (the WAL and the uncommitted offsets keep that safe).
		<-ctx.Done()
		stop()
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		<-again
		fmt.Fprintln(os.Stderr, "connector: second signal, exiting now")
		os.Exit(130)
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// usageError is a problem with the command line or the configuration: exit
// status 2, nothing was connected to.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "connector:", err)
	if isUsage(err) {
		return 2
	}
	return 1
}

const usage = `usage: connector <command> [flags]

commands:
  run            consume the configured topics into their tables (default)
  migrate        create the tables, hypertables and policies, then exit
  config check   validate the configuration and print it, secrets redacted
  wal inspect    print the write-ahead log
  dlq ls         list dead letters (file or topic), filtered by topic, class, offset, time
  dlq show       print dead letters whole: metadata, error, key and value
  dlq replay     send dead letters back to their source topic or straight to the tables
  loadgen        produce synthetic market data to Kafka

Run 'connector <command> -h' for the flags of a command.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd := "run"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	sub := func() string {
		if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
			s := args[0]
			args = args[1:]
			return s
		}
		return ""
	}
	switch cmd {
	case "run":
		return cmdRun(ctx, args, stderr)
	case "migrate":
		return cmdMigrate(ctx, args, stderr)
	case "config":
		if s := sub(); s != "check" {
			return &usageError{fmt.Errorf("unknown command 'config %s' (want 'config check')", s)}
		}
		return cmdConfigCheck(args, stdout, stderr)
	case "wal":
		if s := sub(); s != "inspect" {
			return &usageError{fmt.Errorf("unknown command 'wal %s' (want 'wal inspect')", s)}
		}
		return cmdWALInspect(args, stdout, stderr)
	case "dlq":
		return cmdDLQ(ctx, sub(), args, stdout, stderr)
	case "loadgen":
		return cmdLoadgen(ctx, args, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return &usageError{fmt.Errorf("unknown command %q", cmd)}
}
