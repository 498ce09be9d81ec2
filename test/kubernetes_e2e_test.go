package e2e

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/internal/config"
)

// k8sDir holds the Kubernetes example.
const k8sDir = "../deploy/kubernetes"

// The parts of the Kubernetes objects the test reads.
type (
	k8sObject struct {
		APIVersion string                `yaml:"apiVersion"`
		Kind       string                `yaml:"kind"`
		Metadata   struct{ Name string } `yaml:"metadata"`
		StringData map[string]string     `yaml:"stringData"`
		Resources  []string              `yaml:"resources"` // Kustomization
		Spec       struct {
			Template struct {
				Spec k8sPodSpec `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	k8sPodSpec struct {
		TerminationGracePeriodSeconds *int           `yaml:"terminationGracePeriodSeconds"`
		InitContainers                []k8sContainer `yaml:"initContainers"`
		Containers                    []k8sContainer `yaml:"containers"`
	}
	k8sContainer struct {
		Name          string      `yaml:"name"`
		RestartPolicy string      `yaml:"restartPolicy"`
		Env           []k8sEnvVar `yaml:"env"`
		Ports         []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		StartupProbe   *k8sProbe `yaml:"startupProbe"`
		LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
		ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
	}
	k8sEnvVar struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct{ Name, Key string } `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	}
	k8sProbe struct {
		HTTPGet *struct {
			Path string    `yaml:"path"`
			Port yaml.Node `yaml:"port"` // a name or a number
		} `yaml:"httpGet"`
	}
)

// loadK8s decodes every document of every .yaml file in k8sDir, strictly
// (a misspelt field of the parts above would otherwise read as absent).
func loadK8s(t *testing.T) (objs []k8sObject, files []string) {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, filepath.Base(p))
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var o k8sObject
			if err := dec.Decode(&o); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", p, err)
			}
			objs = append(objs, o)
		}
	}
	return objs, files
}

// envOf resolves a container's environment as the kubelet does: literal
// values with $(VAR) references to earlier variables, and secretKeyRefs
// from the example Secrets.
func envOf(t *testing.T, c k8sContainer, secrets map[string]map[string]string) (environ []string, vars map[string]string) {
	t.Helper()
	vars = map[string]string{}
	ref := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			r := e.ValueFrom.SecretKeyRef
			sv, ok := secrets[r.Name][r.Key]
			if !ok {
				t.Fatalf("container %s: env %s refers to secret %s key %s, which the manifests do not define", c.Name, e.Name, r.Name, r.Key)
			}
			v = sv
		case e.ValueFrom != nil:
			t.Fatalf("container %s: env %s: only value and secretKeyRef are understood here", c.Name, e.Name)
		default:
			v = ref.ReplaceAllStringFunc(v, func(m string) string {
				name := ref.FindStringSubmatch(m)[1]
				if x, ok := vars[name]; ok {
					return x
				}
				return m // the kubelet leaves unknown references as they are
			})
		}
		vars[e.Name] = v
		environ = append(environ, e.Name+"="+v)
	}
	return environ, vars
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return n
}

// TestKubernetesManifests parses deploy/kubernetes and checks it against
// pgsidecar itself: the sidecar's configuration is loaded from the
// manifest's env and Secret exactly as pgsidecar loads it, the probes must
// hit the health listener's port (the config default) on the paths the
// real binary answers 200, the grace period must outlast shutdown_timeout,
// and the application's DATABASE_URL must reach the client listener.
func TestKubernetesManifests(t *testing.T) {
	objs, files := loadK8s(t)
	secrets := map[string]map[string]string{}
	var dep *k8sObject
	for i, o := range objs {
		switch o.Kind {
		case "Secret":
			secrets[o.Metadata.Name] = o.StringData
		case "Deployment":
			dep = &objs[i]
		case "Kustomization":
			want := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return f == "kustomization.yaml" })
			got := slices.Sorted(slices.Values(o.Resources))
			if !slices.Equal(got, want) {
				t.Errorf("kustomization resources %v, want every manifest %v", got, want)
			}
		}
	}
	if dep == nil {
		t.Fatal("no Deployment")
	}
	pod := dep.Spec.Template.Spec

	var side *k8sContainer
	for i, c := range pod.InitContainers {
		if c.Name == "pgsidecar" {
			side = &pod.InitContainers[i]
		}
	}
	if side == nil || side.RestartPolicy != "Always" {
		t.Fatalf("pgsidecar must be an init container with restartPolicy: Always (a native sidecar); got %+v", side)
	}
	if len(pod.Containers) == 0 {
		t.Fatal("no application container")
	}

	// The sidecar's configuration, as pgsidecar itself reads it.
	environ, vars := envOf(t, *side, secrets)
	if i := slices.IndexFunc(side.Env, func(e k8sEnvVar) bool { return e.Name == "DATABASE_URL" }); i < 0 ||
		side.Env[i].ValueFrom == nil || side.Env[i].ValueFrom.SecretKeyRef == nil || vars["DATABASE_URL"] == "" {
		t.Error("pgsidecar's DATABASE_URL must come from a Secret")
	}
	cfg, err := config.Load("", environ)
	if err != nil {
		t.Fatalf("pgsidecar would not start with the manifest's environment: %v", err)
	}

	// Probes: the health port is the configured one, which is the
	// default's port; it listens on every interface, since the kubelet
	// probes the pod IP.
	defaults := config.Defaults()
	healthPort := portOf(t, cfg.Health.Listen)
	if want := portOf(t, defaults.Health.Listen); healthPort != want {
		t.Errorf("health.listen port %d, want the default %d", healthPort, want)
	}
	if host, _, _ := net.SplitHostPort(cfg.Health.Listen); host != "" && !net.ParseIP(host).IsUnspecified() {
		t.Errorf("health.listen %q: the kubelet probes the pod IP, so it must listen on every interface", cfg.Health.Listen)
	}
	named := map[string]int{}
	for _, p := range side.Ports {
		named[p.Name] = p.ContainerPort
	}
	probes := map[string]*k8sProbe{"startup": side.StartupProbe, "liveness": side.LivenessProbe, "readiness": side.ReadinessProbe}
	wantPath := map[string]string{"startup": "/livez", "liveness": "/livez", "readiness": "/readyz"}
	for kind, pr := range probes {
		if pr == nil || pr.HTTPGet == nil {
			t.Errorf("%s probe: missing or not httpGet", kind)
			continue
		}
		port, err := strconv.Atoi(pr.HTTPGet.Port.Value)
		if err != nil {
			port = named[pr.HTTPGet.Port.Value]
		}
		if port != healthPort {
			t.Errorf("%s probe port %q = %d, health.listen port %d", kind, pr.HTTPGet.Port.Value, port, healthPort)
		}
		if pr.HTTPGet.Path != wantPath[kind] {
			t.Errorf("%s probe path %q, want %q", kind, pr.HTTPGet.Path, wantPath[kind])
		}
	}

	// Termination: the whole pod's grace outlasts the drain.
	if g := pod.TerminationGracePeriodSeconds; g == nil {
		t.Error("terminationGracePeriodSeconds is not set")
	} else if time.Duration(*g)*time.Second <= cfg.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %d must be above shutdown_timeout %v", *g, cfg.ShutdownTimeout)
	}

	// Resources: memory sized (the comment holds the measurement).
	if side.Resources.Requests["memory"] == "" || side.Resources.Requests["cpu"] == "" || side.Resources.Limits["memory"] == "" {
		t.Errorf("pgsidecar resources: requests %v limits %v", side.Resources.Requests, side.Resources.Limits)
	}

	// The application reaches the client listener with the upstream's
	// login (the default auth), and pgsidecar does not point at itself.
	_, appVars := envOf(t, pod.Containers[0], secrets)
	appURL, err := url.Parse(appVars["DATABASE_URL"])
	if err != nil {
		t.Fatalf("application DATABASE_URL: %v", err)
	}
	up, err := url.Parse(cfg.Upstream)
	if err != nil {
		t.Fatal(err)
	}
	upPass, _ := up.User.Password()
	appPass, _ := appURL.User.Password()
	if appURL.Port() != strconv.Itoa(portOf(t, cfg.Listen)) || !net.ParseIP(appURL.Hostname()).IsLoopback() ||
		appURL.User.Username() != up.User.Username() || appPass != upPass {
		t.Errorf("application DATABASE_URL %s does not log in to pgsidecar's listen %s as the upstream user", appURL.Redacted(), cfg.Listen)
	}
	if up.Port() == strconv.Itoa(portOf(t, cfg.Listen)) && net.ParseIP(up.Hostname()).IsLoopback() {
		t.Errorf("pgsidecar's upstream %s is its own listener", up.Redacted())
	}

	// The real binary, run with the manifest's environment (only the
	// database and the ports are the test's), answers the probes' paths.
	opts := []ProxyOption{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "DATABASE_URL", "PGSIDECAR_LISTEN", "PGSIDECAR_HEALTH__LISTEN":
			continue
		}
		opts = append(opts, WithEnv(k, v))
	}
	p := StartProxy(t, opts...)
	for kind, pr := range probes {
		path := pr.HTTPGet.Path
		waitFor(t, 10*time.Second, kind+" probe "+path+" 200", func() bool {
			resp, err := httpClient.Get("http://" + p.HealthAddr + path)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
}
