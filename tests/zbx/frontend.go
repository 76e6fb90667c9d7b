package zbx

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// confConst is the line of include/classes/core/CConfigFile.php that names the configuration file:
// '/etc/zabbix/zabbix.conf.php' in Debian's packages, '/conf/zabbix.conf.php' upstream.
var confConst = regexp.MustCompile(`(?m)^(\s*const CONFIG_FILE_PATH = )'[^']*';`)

// privateFrontend builds dst, a tree PHP sees as a frontend of its own, from the installed one at
// src, with the configuration conf at dst/conf/zabbix.conf.php; it returns that path.
//
// PHP resolves symlinks in __FILE__, and the frontend finds its root directory and its classes from
// __FILE__: a PHP file reached through a symlink would load its neighbours (CConfigFile.php among
// them) from the installed tree. So every top-level directory holding PHP is copied (a few MB, well
// under a second), the rest (locale, assets, fonts...) is symlinked, and the copy of CConfigFile.php
// names the private conf.
func privateFrontend(src, dst, conf string) (string, error) {
	if err := os.Mkdir(dst, 0o755); err != nil {
		return "", err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		from, to := filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())
		if e.IsDir() {
			php, err := holdsPHP(from)
			if err != nil {
				return "", err
			}
			if !php {
				if err := os.Symlink(from, to); err != nil {
					return "", err
				}
				continue
			}
		}
		if err := copyTree(from, to); err != nil {
			return "", fmt.Errorf("copy %s: %w", from, err)
		}
	}
	path := filepath.Join(dst, "conf", "zabbix.conf.php")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return "", err
	}
	cls := filepath.Join(dst, "include", "classes", "core", "CConfigFile.php")
	b, err := os.ReadFile(cls)
	if err != nil {
		return "", err
	}
	if n := len(confConst.FindAllIndex(b, -1)); n != 1 {
		return "", fmt.Errorf("%s: %d lines 'const CONFIG_FILE_PATH = ...', want 1: the frontend changed", cls, n)
	}
	b = confConst.ReplaceAll(b, []byte(fmt.Sprintf("${1}'%s';", path)))
	// The copy is a new file: writing through it cannot reach the installed one.
	if err := os.WriteFile(cls, b, 0o644); err != nil {
		return "", err
	}
	return path, nil
}

func holdsPHP(dir string) (bool, error) {
	found := false
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasSuffix(p, ".php") {
			found = true
			return filepath.SkipAll
		}
		return nil
	})
	return found, err
}

// copyTree copies regular files and directories and recreates symlinks as they are (the packaged
// ones point at system files the frontend only reads).
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(dst, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, to)
		case d.IsDir():
			return os.Mkdir(to, 0o755)
		case d.Type().IsRegular():
			return copyFile(p, to)
		}
		return nil // no sockets or devices in a frontend
	})
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// frontConf is the frontend's configuration for stack s.
func frontConf(s *Stack, name string) string {
	return fmt.Sprintf(`<?php
$DB['TYPE'] = 'POSTGRESQL'; $DB['SERVER'] = '127.0.0.1'; $DB['PORT'] = '%d';
$DB['DATABASE'] = 'zabbix'; $DB['USER'] = 'zabbix'; $DB['PASSWORD'] = 'zabbix'; $DB['SCHEMA'] = '';
$DB['ENCRYPTION'] = false; $DB['KEY_FILE'] = ''; $DB['CERT_FILE'] = ''; $DB['CA_FILE'] = '';
$DB['VERIFY_HOST'] = false; $DB['CIPHER_LIST'] = ''; $DB['VAULT'] = ''; $DB['VAULT_URL'] = '';
$DB['VAULT_PREFIX'] = ''; $DB['VAULT_DB_PATH'] = ''; $DB['VAULT_TOKEN'] = ''; $DB['VAULT_CERT_FILE'] = ''; $DB['VAULT_KEY_FILE'] = '';
$DB['DOUBLE_IEEE754'] = true;
$ZBX_SERVER = '127.0.0.1'; $ZBX_SERVER_PORT = '%d'; $ZBX_SERVER_NAME = '%s';
$IMAGE_FORMAT_DEFAULT = IMAGE_FORMAT_PNG;
`, s.PGPort, s.ServerPort, name)
}
