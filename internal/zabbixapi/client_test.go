package zabbixapi

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A mock, named as one: a frontend that accepts the connection and never answers, a fault the
// real php -S does not produce on demand. The call must give up at its deadline.
func TestClientDeadline(t *testing.T) {
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-hang }))
	defer srv.Close()
	defer close(hang)
	c := New(srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := c.Version(ctx)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "apiinfo.version")
	assert.Less(t, time.Since(t0), 5*time.Second)
}

func TestClientRefused(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	c := New("http://" + addr)
	c.SetToken("x")
	err = c.Call(context.Background(), "host.get", map[string]any{}, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "zabbix api host.get")
	assert.False(t, IsAPIError(err))
	assert.Equal(t, "http://"+addr+"/api_jsonrpc.php", c.URL())
}

func TestClientNotLoggedIn(t *testing.T) {
	err := New("http://127.0.0.1:1/").Call(context.Background(), "host.get", nil, nil)
	assert.ErrorContains(t, err, "not logged in")
}

func TestParseVersion(t *testing.T) {
	ma, mi, err := parseVersion("7.0.9")
	require.NoError(t, err)
	assert.Equal(t, [2]int{7, 0}, [2]int{ma, mi})
	for _, bad := range []string{"", "7", "x.1", "7.y.1"} {
		_, _, err := parseVersion(bad)
		assert.ErrorContains(t, err, "want major.minor", bad)
	}
}
