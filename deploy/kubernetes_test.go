package deploy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ktsink/connector/config"
	"github.com/ktsink/connector/sink/table"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// rendered is what `kubectl apply -k` would apply, each object decoded
// into its API type.
type rendered struct {
	statefulSet     *appsv1.StatefulSet
	services        []*corev1.Service
	configMaps      []*corev1.ConfigMap
	pdbs            []*policyv1.PodDisruptionBudget
	serviceAccounts []*corev1.ServiceAccount
	serviceMonitors []*monitoringv1.ServiceMonitor
}

// render builds the kustomization in dir with kustomize's own library and
// decodes every object strictly (as the API server does: case-sensitive,
// no unknown or duplicate field) into its Kubernetes API type; an object
// of a kind the tests do not know fails.
func render(t *testing.T, dir string) rendered {
	t.Helper()
	resMap, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var out rendered
	for _, r := range resMap.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		decode := func(into any) {
			strict, err := kjson.UnmarshalStrict(data, into)
			if err != nil {
				t.Fatalf("%s does not decode: %v", r.CurId(), err)
			}
			for _, e := range strict {
				t.Errorf("%s: %v", r.CurId(), e)
			}
		}
		gvk := r.GetGvk()
		switch gv := gvk.ApiVersion() + " " + gvk.Kind; gv {
		case "apps/v1 StatefulSet":
			if out.statefulSet != nil {
				t.Fatalf("two StatefulSets")
			}
			out.statefulSet = new(appsv1.StatefulSet)
			decode(out.statefulSet)
		case "v1 Service":
			out.services = append(out.services, new(corev1.Service))
			decode(out.services[len(out.services)-1])
		case "v1 ConfigMap":
			out.configMaps = append(out.configMaps, new(corev1.ConfigMap))
			decode(out.configMaps[len(out.configMaps)-1])
		case "v1 ServiceAccount":
			out.serviceAccounts = append(out.serviceAccounts, new(corev1.ServiceAccount))
			decode(out.serviceAccounts[len(out.serviceAccounts)-1])
		case "policy/v1 PodDisruptionBudget":
			out.pdbs = append(out.pdbs, new(policyv1.PodDisruptionBudget))
			decode(out.pdbs[len(out.pdbs)-1])
		case "monitoring.coreos.com/v1 ServiceMonitor":
			out.serviceMonitors = append(out.serviceMonitors, new(monitoringv1.ServiceMonitor))
			decode(out.serviceMonitors[len(out.serviceMonitors)-1])
		default:
			t.Errorf("%s: a kind the tests do not check (%s)", r.CurId(), gv)
		}
	}
	if out.statefulSet == nil {
		t.Fatal("no StatefulSet")
	}
	return out
}

// kustomizations are the base and the example overlay, each with what the
// Secrets hold for the test: whether the optional ones exist.
var kustomizations = []struct {
	name            string
	dir             string
	optionalSecrets bool // the optional Secret keys exist (SASL configured)
	serviceMonitor  bool
}{
	{name: "base", dir: "kubernetes"},
	{name: "production overlay", dir: "kubernetes-overlays/production", optionalSecrets: true, serviceMonitor: true},
}

func TestKubernetesManifests(t *testing.T) {
	for _, k := range kustomizations {
		t.Run(k.name, func(t *testing.T) {
			r := render(t, k.dir)
			if got := len(r.serviceMonitors) > 0; got != k.serviceMonitor {
				t.Errorf("ServiceMonitor rendered: %v, want %v", got, k.serviceMonitor)
			}
			cfg, pod := checkConfiguration(t, r, k.optionalSecrets)
			checkStatefulSet(t, r, cfg)
			checkHTTP(t, r, cfg, pod)
			checkSecurity(t, pod)
			checkResources(t, pod, cfg)
		})
	}
}

// connector is the connector's container in the pod template.
func connector(t *testing.T, pod *corev1.PodSpec) *corev1.Container {
	t.Helper()
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("want one container, got %d (and %d init)", len(pod.Containers), len(pod.InitContainers))
	}
	return &pod.Containers[0]
}

// mountFor is the volume mount whose directory holds file, nil for none.
func mountFor(c *corev1.Container, file string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		rel, err := filepath.Rel(m.MountPath, file)
		if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			continue
		}
		if best == nil || len(m.MountPath) > len(best.MountPath) {
			best = &c.VolumeMounts[i]
		}
	}
	return best
}

func volume(pod *corev1.PodSpec, name string) *corev1.Volume {
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == name {
			return &pod.Volumes[i]
		}
	}
	return nil
}

// checkConfiguration loads the configuration the pod would run with, as
// `connector config check` does: the config file from its ConfigMap at
// the path the arguments name, the environment the pod sets (each
// variable one the connector reads; secrets from secretKeyRef). It
// returns the configuration of the pod ktsink-0.
func checkConfiguration(t *testing.T, r rendered, optionalSecrets bool) (config.Config, *corev1.PodSpec) {
	t.Helper()
	pod := &r.statefulSet.Spec.Template.Spec
	c := connector(t, pod)
	podName := r.statefulSet.Name + "-0"

	env := map[string]string{}
	for _, e := range c.Env {
		if !slices.Contains(config.EnvVars, e.Name) {
			t.Errorf("env %s is not a variable the connector reads (config.Bindings)", e.Name)
		}
		switch {
		case e.ValueFrom == nil:
			if e.Name == "DATABASE_URL" || strings.Contains(e.Name, "PASSWORD") {
				t.Errorf("env %s is written in the manifest: it belongs in a Secret", e.Name)
			}
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			if e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
				t.Errorf("env %s from %s: only the pod's name is used", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = podName
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name == "" || ref.Key == "" {
				t.Errorf("env %s: secretKeyRef without name or key", e.Name)
			}
			if ref.Optional != nil && *ref.Optional && !optionalSecrets {
				continue
			}
			env[e.Name] = map[string]string{
				"DATABASE_URL": "postgres://ktsink:secret@postgres:5432/ktsink?sslmode=require",
			}[e.Name]
			if env[e.Name] == "" {
				env[e.Name] = "secret"
			}
		default:
			t.Errorf("env %s: unexpected source %+v", e.Name, e.ValueFrom)
		}
	}
	for _, want := range []string{"KAFKA_INSTANCE_ID", "DATABASE_URL", "KAFKA_SASL_PASSWORD"} {
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == want }) {
			t.Errorf("env %s not set", want)
		}
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "KAFKA_INSTANCE_ID" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil
	}) {
		t.Error("KAFKA_INSTANCE_ID is not the pod's name (downward API)")
	}

	// the config file: -config in the arguments, on a ConfigMap volume
	i := slices.Index(c.Args, "-config")
	if i < 0 || i+1 >= len(c.Args) || len(c.Command) != 0 {
		t.Fatalf("args %q (command %q): want the image's entrypoint with run -config FILE", c.Args, c.Command)
	}
	if c.Args[0] != "run" {
		t.Errorf("args %q: want the run command", c.Args)
	}
	file := c.Args[i+1]
	m := mountFor(c, file)
	if m == nil {
		t.Fatalf("config file %s is on no volume mount", file)
	}
	v := volume(pod, m.Name)
	if v == nil || v.ConfigMap == nil {
		t.Fatalf("config file %s: volume %s is not a ConfigMap", file, m.Name)
	}
	var cm *corev1.ConfigMap
	for _, x := range r.configMaps {
		if x.Name == v.ConfigMap.Name {
			cm = x
		}
	}
	if cm == nil {
		t.Fatalf("ConfigMap %s is not rendered", v.ConfigMap.Name)
	}
	rel, _ := filepath.Rel(m.MountPath, file)
	data, ok := cm.Data[rel]
	if !ok {
		t.Fatalf("ConfigMap %s has no key %s (keys %v)", cm.Name, rel, keys(cm.Data))
	}
	local := filepath.Join(t.TempDir(), rel)
	if err := os.WriteFile(local, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := config.Read(&config.Flags{ConfigFile: local}, lookup, config.Loose)
	if err != nil {
		t.Fatalf("the ConfigMap's %s does not load: %v", rel, err)
	}
	// The files TLS names are mounted from Secrets: each must lie on a
	// Secret volume; the test puts a CA of its own in its place.
	if f := cfg.Kafka.TLS.CAFile; f != "" {
		m := mountFor(c, f)
		if m == nil || volume(pod, m.Name) == nil || volume(pod, m.Name).Secret == nil {
			t.Errorf("kafka.tls.ca_file %s is on no Secret volume", f)
		}
		cfg.Kafka.TLS.CAFile = testCA(t)
	}
	for _, f := range []string{cfg.Kafka.TLS.CertFile, cfg.Kafka.TLS.KeyFile} {
		if f != "" {
			t.Errorf("%s: the test does not stand in for client certificates yet", f)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("the pod's configuration is invalid (as config check would say):\n%v", err)
	}
	if err := mappings(cfg); err != nil {
		t.Fatalf("the pod's topic mappings are invalid (as config check would say):\n%v", err)
	}
	if cfg.Kafka.InstanceID != podName {
		t.Errorf("kafka.instance_id %q, want the pod's name %q", cfg.Kafka.InstanceID, podName)
	}
	return cfg, pod
}

// mappings builds the tables of the topics mapped by columns, as
// `connector config check` does.
func mappings(cfg config.Config) error {
	for i, tp := range cfg.Topics {
		if tp.Kind != "" {
			continue
		}
		fields := make([]table.Field, len(tp.Columns))
		for j, c := range tp.Columns {
			fields[j] = table.Field{Column: c.Name, Type: c.Type, Path: c.Path, TimeFormat: c.TimeFormat, Required: c.Required}
		}
		if _, err := table.Mapped(cfg.Postgres.Schema, tp.Table, table.Mapping{
			Fields: fields, Key: tp.Key, TimeColumn: tp.TimeColumn, Mode: tp.Mode,
		}); err != nil {
			return fmt.Errorf("topics[%d] (topic %s, table %s): %w", i, tp.Name, tp.Table, err)
		}
	}
	return nil
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// testCA writes a self-signed CA certificate and returns its file.
func testCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// checkStatefulSet checks the set, its volumes, its headless Service and
// its disruption budget against the configuration.
func checkStatefulSet(t *testing.T, r rendered, cfg config.Config) {
	t.Helper()
	ss := r.statefulSet
	pod := &ss.Spec.Template.Spec
	c := connector(t, pod)

	sel, err := metav1.LabelSelectorAsSelector(ss.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	podLabels := labels.Set(ss.Spec.Template.Labels)
	if !sel.Matches(podLabels) {
		t.Errorf("StatefulSet selector %v does not select its pods %v", sel, podLabels)
	}
	if ss.Spec.Replicas == nil || *ss.Spec.Replicas < 1 {
		t.Errorf("replicas %v", ss.Spec.Replicas)
	}
	if ss.Spec.UpdateStrategy.Type != appsv1.RollingUpdateStatefulSetStrategyType {
		t.Errorf("update strategy %q, want RollingUpdate", ss.Spec.UpdateStrategy.Type)
	}

	// shutdown: the kubelet's SIGKILL comes after the connector's own deadline
	grace := pod.TerminationGracePeriodSeconds
	if grace == nil {
		t.Errorf("terminationGracePeriodSeconds unset: the default 30s is not above shutdown_timeout %s", time.Duration(cfg.ShutdownTimeout))
	} else if time.Duration(*grace)*time.Second <= time.Duration(cfg.ShutdownTimeout) {
		t.Errorf("terminationGracePeriodSeconds %d is not above shutdown_timeout %s", *grace, time.Duration(cfg.ShutdownTimeout))
	}

	// the WAL and the dead-letter file on the pod's own claim
	claims := map[string]bool{}
	for _, pvc := range ss.Spec.VolumeClaimTemplates {
		claims[pvc.Name] = true
		if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOnce) {
			t.Errorf("claim %s: access modes %v", pvc.Name, pvc.Spec.AccessModes)
		}
		if q := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; q.IsZero() {
			t.Errorf("claim %s requests no storage", pvc.Name)
		}
	}
	for _, f := range []struct{ setting, path string }{{"wal.path", cfg.WAL.Path}, {"dlq.file", cfg.DLQ.File}} {
		if f.path == "-" && f.setting == "dlq.file" {
			continue
		}
		if !filepath.IsAbs(f.path) {
			t.Errorf("%s %s is relative: the image's working directory is not a volume", f.setting, f.path)
			continue
		}
		m := mountFor(c, f.path)
		switch {
		case m == nil:
			t.Errorf("%s %s lies on no volume mount", f.setting, f.path)
		case !claims[m.Name] || volume(pod, m.Name) != nil:
			t.Errorf("%s %s lies on volume %s, not on a volumeClaimTemplate", f.setting, f.path, m.Name)
		case m.ReadOnly:
			t.Errorf("%s %s lies on a read-only mount", f.setting, f.path)
		}
	}

	// the headless governing Service
	var headless *corev1.Service
	for _, s := range r.services {
		if s.Name == ss.Spec.ServiceName {
			headless = s
		}
	}
	if headless == nil {
		t.Fatalf("serviceName %q is not a rendered Service", ss.Spec.ServiceName)
	}
	if headless.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("Service %s is not headless (clusterIP %q)", headless.Name, headless.Spec.ClusterIP)
	}
	if !labels.SelectorFromSet(headless.Spec.Selector).Matches(podLabels) || len(headless.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not select the pods %v", headless.Spec.Selector, podLabels)
	}

	if len(r.pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets, want 1", len(r.pdbs))
	}
	pdb := r.pdbs[0]
	if pdb.Spec.MaxUnavailable == nil || *pdb.Spec.MaxUnavailable != intstr.FromInt32(1) || pdb.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget: maxUnavailable %v, minAvailable %v; want maxUnavailable 1", pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
	}
	if psel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err != nil || !psel.Matches(podLabels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the pods (%v)", pdb.Spec.Selector, err)
	}

	if sa := pod.ServiceAccountName; sa != "" && !slices.ContainsFunc(r.serviceAccounts, func(s *corev1.ServiceAccount) bool { return s.Name == sa }) {
		t.Errorf("serviceAccountName %s is not rendered", sa)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token it does not use")
	}

	// the session timeout: a restarted pod is back within it, at least
	// after the old one's drain
	if time.Duration(cfg.Kafka.SessionTimeout) <= time.Duration(cfg.ShutdownTimeout) {
		t.Errorf("kafka.session_timeout %s is not above shutdown_timeout %s: a rolling restart rebalances at every pod",
			time.Duration(cfg.Kafka.SessionTimeout), time.Duration(cfg.ShutdownTimeout))
	}
}

// checkHTTP checks the ports, the probes and the scraping against the
// connector's metrics address and the paths it serves.
func checkHTTP(t *testing.T, r rendered, cfg config.Config, pod *corev1.PodSpec) {
	t.Helper()
	c := connector(t, pod)
	port := addrPort(t, "metrics.addr", cfg.Metrics.Addr)
	if def := addrPort(t, "default metrics.addr", config.Default().Metrics.Addr); def != port {
		t.Errorf("metrics.addr port %d is not the connector's default %d (the Dockerfile exposes that)", port, def)
	}
	var named *corev1.ContainerPort
	for i, p := range c.Ports {
		if p.ContainerPort == port {
			named = &c.Ports[i]
		}
	}
	if named == nil || named.Name == "" {
		t.Fatalf("container ports %v: none named for metrics.addr's port %d", c.Ports, port)
	}
	resolve := func(p intstr.IntOrString) int32 {
		if p.Type == intstr.String {
			for _, cp := range c.Ports {
				if cp.Name == p.StrVal {
					return cp.ContainerPort
				}
			}
			return -1
		}
		return p.IntVal
	}
	served := handlers(t)
	for _, pr := range []struct {
		name, path string
		probe      *corev1.Probe
	}{
		{"startupProbe", "/healthz", c.StartupProbe},
		{"livenessProbe", "/healthz", c.LivenessProbe},
		{"readinessProbe", "/readyz", c.ReadinessProbe},
	} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: want an HTTP GET of %s", pr.name, pr.path)
			continue
		}
		g := pr.probe.HTTPGet
		if g.Path != pr.path || resolve(g.Port) != port {
			t.Errorf("%s: GET %s on port %s, want %s on %d", pr.name, g.Path, g.Port.String(), pr.path, port)
		}
		if !served[g.Path] {
			t.Errorf("%s: the connector serves no %s (it serves %v)", pr.name, g.Path, keys(served))
		}
	}
	if sp := c.StartupProbe; sp != nil && sp.FailureThreshold*sp.PeriodSeconds < 60 {
		t.Errorf("startupProbe allows %ds to start: less than a minute for connecting and creating tables", sp.FailureThreshold*sp.PeriodSeconds)
	}

	svc := r.services[slices.IndexFunc(r.services, func(s *corev1.Service) bool { return s.Name == r.statefulSet.Spec.ServiceName })]
	var sp *corev1.ServicePort
	for i := range svc.Spec.Ports {
		if resolve(svc.Spec.Ports[i].TargetPort) == port {
			sp = &svc.Spec.Ports[i]
		}
	}
	if sp == nil {
		t.Fatalf("Service %s publishes no port to %d", svc.Name, port)
	}
	if sp.Name != named.Name {
		t.Errorf("Service port %q: want the container port's name %q", sp.Name, named.Name)
	}
	ann := svc.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != strconv.Itoa(int(port)) || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("Service annotations %v: want prometheus.io scrape of /metrics on %d", ann, port)
	}
	if !served["/metrics"] {
		t.Error("the connector serves no /metrics")
	}
	for _, sm := range r.serviceMonitors {
		if !labels.SelectorFromSet(sm.Spec.Selector.MatchLabels).Matches(labels.Set(svc.Labels)) || len(sm.Spec.Selector.MatchLabels) == 0 {
			t.Errorf("ServiceMonitor %s selector %v does not select Service %s %v", sm.Name, sm.Spec.Selector.MatchLabels, svc.Name, svc.Labels)
		}
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != sp.Name || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("ServiceMonitor %s endpoints %+v: want port %s, /metrics", sm.Name, sm.Spec.Endpoints, sp.Name)
		}
	}
}

// addrPort is the port of a listen address.
func addrPort(t *testing.T, what, addr string) int32 {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s %q: %v", what, addr, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil || n <= 0 {
		t.Fatalf("%s %q: no fixed port", what, addr)
	}
	return int32(n)
}

// handlers are the paths the connector's HTTP server registers, read from
// its source (cmd/connector/http.go), which no test here can import.
func handlers(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile("../cmd/connector/http.go")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range handlePath.FindAllStringSubmatch(string(src), -1) {
		out[m[1]] = true
	}
	return out
}

var handlePath = regexp.MustCompile(`mux\.Handle(?:Func)?\("(/[a-z]*)"`)

// checkSecurity checks the pod runs as a non-root user on a read-only
// root filesystem, without capabilities, under the runtime's seccomp
// profile.
func checkSecurity(t *testing.T, pod *corev1.PodSpec) {
	t.Helper()
	c := connector(t, pod)
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || sc == nil {
		t.Fatal("no security context")
	}
	nonRoot := func(b *bool) bool { return b != nil && *b }
	if !nonRoot(psc.RunAsNonRoot) && !nonRoot(sc.RunAsNonRoot) {
		t.Error("runAsNonRoot not set")
	}
	if psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Error("runAsUser not a non-root user")
	}
	if psc.FSGroup == nil {
		t.Error("no fsGroup: the volume may not be writable by the user")
	}
	if !nonRoot(sc.ReadOnlyRootFilesystem) {
		t.Error("readOnlyRootFilesystem not set")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("allowPrivilegeEscalation not false")
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("capabilities %+v: want drop ALL, add none", sc.Capabilities)
	}
	seccomp := psc.SeccompProfile
	if sc.SeccompProfile != nil {
		seccomp = sc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccomp profile %+v: want RuntimeDefault", seccomp)
	}
}

// checkResources checks the memory request and limit against the byte
// budget: the request covers the Go memory limit the connector sets
// (1.5 × max_bytes + 48MiB), the limit the measured bound the README gives
// (2 × max_bytes + 64MiB).
func checkResources(t *testing.T, pod *corev1.PodSpec, cfg config.Config) {
	t.Helper()
	c := connector(t, pod)
	maxBytes := int64(cfg.Coordinator.MaxBytes)
	soft := maxBytes + maxBytes/2 + 48<<20
	bound := 2*maxBytes + 64<<20
	req, lim := c.Resources.Requests[corev1.ResourceMemory], c.Resources.Limits[corev1.ResourceMemory]
	if req.Cmp(*resource.NewQuantity(soft, resource.BinarySI)) < 0 {
		t.Errorf("memory request %s is below the Go memory limit %s (1.5 × max_bytes + 48MiB)", req.String(), config.ByteSize(soft))
	}
	if lim.Cmp(*resource.NewQuantity(bound, resource.BinarySI)) < 0 {
		t.Errorf("memory limit %s is below 2 × max_bytes + 64MiB = %s", lim.String(), config.ByteSize(bound))
	}
	if q := c.Resources.Requests[corev1.ResourceCPU]; q.IsZero() {
		t.Error("no CPU request")
	}
}
