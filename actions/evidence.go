package actions

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"libvirt.org/go/libvirt"

	"zabbix-agent2-plugin-kvm/statedir"
)

// Evidence bounds: a forced step waits at most this long for its evidence, and keeps at most this
// much of each piece, so saving it can neither stall the repair nor fill the disk.
const (
	evidenceTime   = 15 * time.Second
	screenshotTime = 5 * time.Second
	serialTail     = 64 << 10
	maxScreenshot  = 16 << 20
)

// saveEvidence keeps what a forced step is about to destroy, in StateDir/evidence/<domain>/<time>/:
// the diagnosis, a console screenshot, the tail of the serial console log, and the output of the
// evidence commands when the guest agent still answers. Each piece that fails says why in
// errors.txt; the directory's path is returned for the report and the audit line.
func (j *job) saveEvidence(diag *Diagnosis) (string, error) {
	a := j.a
	ctx, cancel := context.WithTimeout(context.WithoutCancel(j.ctx), evidenceTime)
	defer cancel()
	root := filepath.Join(a.pol.StateDir, "evidence", statedir.Stem(j.domain))
	if err := os.MkdirAll(root, 0o700); err != nil {
		return "", fmt.Errorf("evidence: %w", err)
	}
	// named by time, so listing sorts oldest first; two steps in one millisecond get a suffix
	stamp := time.Now().UTC().Format("20060102T150405.000Z")
	dir := filepath.Join(root, stamp)
	for n := 2; ; n++ {
		err := os.Mkdir(dir, 0o700)
		if err == nil {
			break
		}
		if !os.IsExist(err) || n > 100 {
			return "", fmt.Errorf("evidence: %w", err)
		}
		dir = filepath.Join(root, fmt.Sprintf("%s-%d", stamp, n))
	}
	var problems []string
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			problems = append(problems, name+": "+err.Error())
		}
	}
	if diag != nil {
		b, _ := json.MarshalIndent(diag, "", "  ")
		write("diagnosis.json", b)
	}
	if img, err := a.screenshot(ctx, j.domain); err != nil {
		problems = append(problems, "screenshot: "+err.Error())
	} else {
		write("screenshot.png", img)
	}
	if tail, err := a.serialTail(ctx, j.domain); err != nil {
		problems = append(problems, "serial console: "+err.Error())
	} else {
		write("serial.log", tail)
	}
	if diag != nil && diag.Signals.agentUp {
		for i, argv := range a.pol.EvidenceCommands {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			var res ExecResult
			err := a.exec(c, j.domain, argv, true, &res)
			cancel()
			out := fmt.Sprintf("$ %s\n%s", CommandLine(argv), res.Stdout+res.Stderr)
			if err != nil {
				out += "\n(" + err.Error() + ")"
			}
			write(fmt.Sprintf("command-%d.txt", i+1), []byte(out))
		}
	}
	if len(problems) > 0 {
		write("errors.txt", []byte(strings.Join(problems, "\n")+"\n"))
	}
	a.pruneEvidence(root)
	return dir, nil
}

// pruneEvidence keeps the newest EvidenceKeep directories of a domain.
func (a *Actor) pruneEvidence(root string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	sort.Slice(entries, func(i, k int) bool { return entries[i].Name() > entries[k].Name() })
	for i, e := range entries {
		if i >= a.pol.EvidenceKeep && e.IsDir() {
			_ = os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
}

// screenshot takes the console's picture (virDomainScreenshot: QEMU's screendump, which needs the
// monitor, so a hung QEMU gives none within the bound) and returns it as PNG.
func (a *Actor) screenshot(ctx context.Context, domain string) ([]byte, error) {
	var data []byte
	var mime string
	err := a.call(ctx, "Screenshot", screenshotTime, domain, func(c *libvirt.Connect, d *libvirt.Domain) error {
		st, err := c.NewStream(0)
		if err != nil {
			return err
		}
		defer st.Free()
		if mime, err = d.Screenshot(st, 0, 0); err != nil {
			_ = st.Abort()
			return err
		}
		buf := make([]byte, 64<<10)
		for {
			n, err := st.Recv(buf)
			// the Go binding says the stream's end as io.EOF (C's 0): every screenshot of a real
			// QEMU ended in "EOF" and was lost while this was treated as a failure
			if errors.Is(err, io.EOF) || (err == nil && n == 0) {
				return st.Finish()
			}
			if err != nil {
				_ = st.Abort()
				return err
			}
			if len(data)+n > maxScreenshot {
				_ = st.Abort()
				return fmt.Errorf("screenshot larger than %d bytes", maxScreenshot)
			}
			data = append(data, buf[:n]...)
		}
	})
	if err != nil {
		return nil, err
	}
	if mime == "image/png" {
		return data, nil
	}
	img, err := decodePPM(data)
	if err != nil {
		return nil, fmt.Errorf("screenshot (%s): %w", mime, err)
	}
	var out bytes.Buffer
	if err := png.Encode(&out, img); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// decodePPM reads the binary PPM (P6, maxval 255) that QEMU's screendump writes.
func decodePPM(b []byte) (image.Image, error) {
	r := bufio.NewReader(bytes.NewReader(b))
	var magic string
	var w, h, maxval int
	if _, err := fmt.Fscan(r, &magic, &w, &h, &maxval); err != nil {
		return nil, fmt.Errorf("not a PPM image: %w", err)
	}
	if magic != "P6" || maxval != 255 || w <= 0 || h <= 0 || w*h > maxScreenshot {
		return nil, fmt.Errorf("unsupported PPM %s %dx%d maxval %d", magic, w, h, maxval)
	}
	if _, err := r.ReadByte(); err != nil { // the single whitespace after the header
		return nil, err
	}
	px := make([]byte, 3*w*h)
	if _, err := io.ReadFull(r, px); err != nil {
		return nil, fmt.Errorf("PPM pixels: %w", err)
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := 0; i < w*h; i++ {
		img.Set(i%w, i/w, color.RGBA{px[3*i], px[3*i+1], px[3*i+2], 255})
	}
	return img, nil
}

// serialTail returns the end of the file the domain's serial console (or console log) writes to.
func (a *Actor) serialTail(ctx context.Context, domain string) ([]byte, error) {
	var doc string
	if err := a.call(ctx, "GetXMLDesc", a.stateTimeout(), domain, func(_ *libvirt.Connect, d *libvirt.Domain) error {
		var err error
		doc, err = d.GetXMLDesc(0)
		return err
	}); err != nil {
		return nil, err
	}
	var x struct {
		Devices struct {
			Serial []struct {
				Type   string `xml:"type,attr"`
				Source struct {
					Path string `xml:"path,attr"`
				} `xml:"source"`
				Log struct {
					File string `xml:"file,attr"`
				} `xml:"log"`
			} `xml:"serial"`
		} `xml:"devices"`
	}
	if err := xml.Unmarshal([]byte(doc), &x); err != nil {
		return nil, err
	}
	for _, s := range x.Devices.Serial {
		path := s.Log.File
		if path == "" && s.Type == "file" {
			path = s.Source.Path
		}
		if path == "" {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.Size() > serialTail {
			_, _ = f.Seek(-serialTail, io.SeekEnd)
		}
		return io.ReadAll(io.LimitReader(f, serialTail))
	}
	return nil, errors.New("the domain writes its serial console to no file (add <log file=…/> to its <serial>)")
}
