// Our stand-in for k8s.io/apiserver/pkg/storage/etcd3/testserver/test_server.go, swapped in at
// build time by `go test -overlay` (scripts/k8s-storage-tests.sh). Kubernetes' etcd3 and cacher
// tests get every etcd client they use from RunEtcd here; upstream starts an embedded etcd per
// call, this one connects to the etcd endpoint given at run time (ETCD_ENDPOINTS, comma-separated
// URLs: one plain etcd, or the sharding proxy), so the same tests run unchanged against either.
//
// Kubernetes' tests assume a fresh, empty etcd per test. Here one etcd serves them all, one test
// at a time (-test.parallel=1), and each new test (by t.Name()) starts by deleting every key.
// Revisions are not reset: no test relies on absolute revision numbers, only on their order.
// Server settings a test puts in the *embed.Config it passes are not applied: the endpoint's own
// flags hold (the driver starts etcd with --experimental-watch-progress-notify-interval=1s, what
// the tests that set one ask for).
package testserver

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

// NewTestConfig keeps upstream's signature for the tests that adjust a config before RunEtcd.
func NewTestConfig(t testing.TB) *embed.Config {
	return embed.NewConfig()
}

var (
	wipeMu   sync.Mutex
	lastWipe string
)

func endpoints(t testing.TB) []string {
	v := os.Getenv("ETCD_ENDPOINTS")
	if v == "" {
		v = os.Getenv("ETCD_ENDPOINT")
	}
	if v == "" {
		t.Fatal("ETCD_ENDPOINTS is not set: these tests need an etcd (or proxy) endpoint, e.g. ETCD_ENDPOINTS=http://127.0.0.1:2379")
	}
	var eps []string
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return eps
}

// RunEtcd returns a client of the endpoint, the key space emptied when this is the first call
// of the running test. The client is closed when the test ends.
func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client {
	t.Helper()
	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   endpoints(t),
		DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithBlock()},
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })

	wipeMu.Lock()
	defer wipeMu.Unlock()
	if lastWipe != t.Name() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := client.Delete(ctx, "", clientv3.WithPrefix()); err != nil {
			t.Fatalf("emptying the key space before the test: %v", err)
		}
		lastWipe = t.Name()
	}
	client.KV = storagetesting.NewKVRecorder(client.KV)
	client.Kubernetes = storagetesting.NewKubernetesRecorder(client.Kubernetes)
	return client
}
