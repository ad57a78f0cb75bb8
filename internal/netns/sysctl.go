package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// SetSysctls writes sysctls (keys in dotted form, e.g.
// "net.ipv4.ip_forward") inside the namespace name, in order. Only the
// net.* tree is per namespace.
func SetSysctls(name string, kv ...[2]string) error {
	return Do(name, func() error {
		for _, s := range kv {
			if !strings.HasPrefix(s[0], "net.") {
				return fmt.Errorf("sysctl %s is not per network namespace", s[0])
			}
			path := filepath.Join("/proc/sys", strings.ReplaceAll(s[0], ".", "/"))
			if err := os.WriteFile(path, []byte(s[1]), 0o644); err != nil {
				return fmt.Errorf("netns %s: sysctl %s=%s: %w", name, s[0], s[1], err)
			}
		}
		return nil
	})
}

// Sysctl reads one sysctl inside the namespace name.
func Sysctl(name, key string) (string, error) {
	var v string
	err := Do(name, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")))
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("netns %s: read sysctl %s: %w", name, key, err)
	}
	return v, nil
}
