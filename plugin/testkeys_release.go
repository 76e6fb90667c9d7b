//go:build !testkeys

package plugin

// testKeys is empty in release builds (see testkeys.go).
func testKeys() map[string]key { return nil }
