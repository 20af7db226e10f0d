package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/ktsink/connector/coordinator"
	"github.com/ktsink/connector/source"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpServer serves /metrics, /healthz, /readyz and /status.
type httpServer struct {
	ln  net.Listener
	srv *http.Server
}

// listenHTTP listens on addr (so a taken port fails at start) and builds
// the handlers; serve serves them.
func listenHTTP(addr string, reg *prometheus.Registry, coord *coordinator.Coordinator, src *source.Source, pool *pgxpool.Pool) (*httpServer, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		var problems []string
		if !src.Member() {
			problems = append(problems, "not a member of the consumer group (joining, or fenced: another process joined with this kafka.instance_id)")
		}
		pctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := pool.Ping(pctx); err != nil {
			problems = append(problems, "database unreachable: "+err.Error())
		}
		if coord.BreakerState() == coordinator.Open {
			problems = append(problems, "circuit breaker open")
		}
		if len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			for _, p := range problems {
				fmt.Fprintln(w, p)
			}
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(struct {
			coordinator.Status
			Group source.Membership `json:"consumer_group"`
		}{coord.Status(), src.Membership()})
	})
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for metrics on %s: %w", addr, err)
	}
	return &httpServer{ln: ln, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}, nil
}

func (h *httpServer) addr() string { return h.ln.Addr().String() }

// serve serves until ctx ends.
func (h *httpServer) serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- h.srv.Serve(h.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving metrics: %w", err)
	case <-ctx.Done():
		err := h.srv.Close()
		if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
			err = errors.Join(err, serr)
		}
		return err
	}
}
