package zbx

import "testing"

func TestSmoke(t *testing.T) {
	for _, v := range []string{"7.0", "6.0"} {
		t.Run(v, func(t *testing.T) { Start(t, Options{Version: v}) })
	}
}
