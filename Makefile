# ktsink — Kafka to TimescaleDB connector.
#
#   make test           bring up PostgreSQL 15 and Apache Kafka (KRaft), run every
#                       test with integration tests required, take down what it started
#   make unit           go test ./... (integration tests skip without their services)
#   make mutants        apply each deliberate break in testdata/mutants/ and check
#                       that the tests named in its header catch it (make test runs
#                       all but those marked `# slow: yes`, with MUTANTS_FAST=1)
#   make build          bin/connector
#   make lint           gofmt, go vet and staticcheck (installed at a pinned version
#                       into .cache/bin; make test runs it first)
#   make services-up    start (or reuse) PostgreSQL and Kafka for working by hand
#   make services-down  stop what services-up started (PostgreSQL keeps its data
#                       for the next services-up; scripts/postgres.sh purge drops it)
#   make bench          the benchmark matrix against the services (QUICK=1: a
#                       subset in under 2 minutes); figures also in bench.json
#   make chaos          the seeded fault-injection soak (cmd/connector/chaos_test.go):
#                       three brokers and a PostgreSQL of its own, connectors killed,
#                       stopped, added and removed, backends terminated, PostgreSQL
#                       and brokers restarted, dead letters refused (topic and file),
#                       all four kinds produced, then an independent check;
#                       make chaos DURATION=30m SEED=7 (CHAOS_FAULTS, CHAOS_OVERFLOW,
#                       CHAOS_OVERSIZED, CHAOS_RATE: see TestChaos)
#
# Ports and addresses can be overridden: make test PGPORT=15432 KAFKA_PORT=19092 TSPORT=15434.
# Commands that need the services run under scripts/with-services.sh.

GO ?= go
TEST_TIMEOUT ?= 40m
PGPORT ?= 5432
KAFKA_PORT ?= 9092
TSPORT ?= 5434
KAFKA_BROKERS ?= 127.0.0.1:$(KAFKA_PORT)
DATABASE_URL ?= postgres://ktsink:ktsink@127.0.0.1:$(PGPORT)/ktsink?sslmode=disable
# Only the targets that run services see these; `make unit` stays free of them.
SERVICES = PGPORT=$(PGPORT) KAFKA_PORT=$(KAFKA_PORT) TSPORT=$(TSPORT)

GOFILES = $(shell find . -name '*.go' -not -path './.cache/*' -not -path './.git/*')

# staticcheck 2026.2.2, the newest release the Go module proxy serves (it
# knows Go 1.26). Installed with go install into a folder named for the
# version, inside the git-ignored .cache: changing the version installs anew.
STATICCHECK_VERSION = v0.8.2
STATICCHECK = $(CURDIR)/.cache/bin/staticcheck-$(STATICCHECK_VERSION)/staticcheck

.PHONY: all build unit test mutants lint services-up services-down clean

all: build

build:
	$(GO) build -o bin/connector ./cmd/connector

unit:
	$(GO) test ./...

# make test runs the short soak too (TestChaos, about 3 minutes of cmd/connector's
# tests: its own brokers and PostgreSQL, seed $(SEED)); TEST_CHAOS=0 leaves it out.
TEST_CHAOS ?= 1
test: lint
	$(SERVICES) KAFKA_BROKERS=$(KAFKA_BROKERS) DATABASE_URL='$(DATABASE_URL)' \
		KTSINK_CHAOS=$(TEST_CHAOS) CHAOS_SEED=$(SEED) \
		GO=$(GO) TEST_TIMEOUT=$(TEST_TIMEOUT) scripts/with-services.sh scripts/test.sh

# Each deliberate break of an invariant in testdata/mutants/ must make the
# tests its header names fail: MUTANTS='name-*' picks some. make test runs
# them too, except those whose header says `# slow: yes` (scripts/test.sh
# sets MUTANTS_FAST=1, which leaves them out); make mutants runs every one.
mutants:
	$(SERVICES) KAFKA_BROKERS=$(KAFKA_BROKERS) DATABASE_URL='$(DATABASE_URL)' \
		scripts/with-services.sh scripts/mutants.sh

lint: $(STATICCHECK)
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

$(STATICCHECK):
	GOBIN=$(dir $(STATICCHECK)) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

services-up:
	$(SERVICES) scripts/postgres.sh up
	$(SERVICES) scripts/kafka.sh up
	$(SERVICES) scripts/timescale.sh up
	@$(SERVICES) scripts/postgres.sh env
	@$(SERVICES) scripts/kafka.sh env
	@$(SERVICES) scripts/timescale.sh env

services-down:
	$(SERVICES) scripts/timescale.sh down
	$(SERVICES) scripts/kafka.sh down
	$(SERVICES) scripts/postgres.sh down

clean:
	rm -rf bin

.PHONY: demo bench chaos

# Needs no shared service: the soak starts its own Kafka cluster (scripts/kafka.sh
# up3 on ports of its own) and its own PostgreSQL 15 (initdb in a temporary folder).
SEED ?= 1
DURATION ?= 150s
CHAOS_TIMEOUT ?= 3h
chaos:
	KTSINK_CHAOS=1 CHAOS_SEED=$(SEED) CHAOS_DURATION=$(DURATION) \
		$(GO) test -count=1 -timeout $(CHAOS_TIMEOUT) -run '^TestChaos$$' -v ./cmd/connector

# The main job end to end on local services: generated market data of every
# kind (bars, options, fundamentals, news; DEMO_RECORDS of each), the connector,
# live progress, and a summary read back from the database.
DEMO_RECORDS ?= 200000
DEMO_RATE ?= 50000
demo: build
	$(SERVICES) KAFKA_BROKERS=$(KAFKA_BROKERS) DATABASE_URL='$(DATABASE_URL)' \
		scripts/with-services.sh $(GO) run ./cmd/ktsink-demo -n $(DEMO_RECORDS) -rate $(DEMO_RATE)

# End-to-end benchmark (cmd/ktsink-bench): the workload matrix, each row against
# its own same-run ceiling (the sink alone on the same rows), then latency
# p50/p99/p99.9 and memory per byte held; an aligned table on stdout and the same
# figures in $(BENCH_JSON). QUICK=1 runs a subset with small n (under 2 minutes);
# BENCH_FLAGS passes more flags (-rows bars-new,mixed -only matrix -n 200000 ...).
BENCH_JSON ?= bench.json
bench: build
	$(SERVICES) KAFKA_BROKERS=$(KAFKA_BROKERS) DATABASE_URL='$(DATABASE_URL)' \
		scripts/with-services.sh $(GO) run ./cmd/ktsink-bench \
		$(if $(filter 1 true yes,$(QUICK)),-quick) -json '$(BENCH_JSON)' $(BENCH_FLAGS)
