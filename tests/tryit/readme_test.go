package tryit

import (
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func readmeBlocks(t *testing.T) []Block {
	t.Helper()
	bs, err := ParseFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

// The section keeps the shape the integration test relies on: the admin's settings first and
// exactly the variables the test sets, one skipped install block, the cleanup last, and every
// block valid bash, so README drift fails here without a Zabbix server.
func TestReadmeSection(t *testing.T) {
	bs := readmeBlocks(t)
	if len(bs) < 4 {
		t.Fatalf("want the vars block, the install block and steps, got %d blocks", len(bs))
	}
	if bs[0].Kind != Vars {
		t.Fatalf("README.md:%d: the first block must be the vars block", bs[0].Line)
	}
	names, err := ExportedNames(bs[0].Text)
	if err != nil {
		t.Fatalf("README.md:%d: %v", bs[0].Line, err)
	}
	if !reflect.DeepEqual(names, TrialVars) {
		t.Errorf("README.md:%d: the vars block exports %v, the test sets %v", bs[0].Line, names, TrialVars)
	}
	var skips []Block
	for _, b := range bs[1:] {
		switch b.Kind {
		case Vars:
			t.Errorf("README.md:%d: a second vars block", b.Line)
		case Skip:
			skips = append(skips, b)
		}
	}
	if len(skips) != 1 || len(AptPackages(skips[0].Text)) == 0 || !strings.Contains(skips[0].Text, "zabbix-agent2/bookworm-backports") {
		t.Errorf("want one skipped block that installs packages and fetches zabbix-agent2 from bookworm-backports, got %d: %+v", len(skips), skips)
	}
	last := bs[len(bs)-1]
	if last.Kind != Run || !strings.Contains(last.Text, `rm -rf "$TRIAL"`) {
		t.Errorf("README.md:%d: the last block must be the cleanup that removes $TRIAL:\n%s", last.Line, last.Text)
	}
	for _, b := range bs {
		if out, err := exec.Command("bash", "-n", "-c", b.Text).CombinedOutput(); err != nil {
			t.Errorf("README.md:%d: bash -n: %v: %s", b.Line, err, out)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for name, md := range map[string]string{
		"no section":      "```sh\necho\n```\n",
		"not closed":      beginMark + "\n```sh\necho\n",
		"marker far away": beginMark + "\n" + skipMark + " x -->\n\n```sh\necho\n```\n" + endMark + "\n",
		"not sh":          beginMark + "\n```bash\necho\n```\n" + endMark + "\n",
		"dedent":          beginMark + "\n   ```sh\n echo\n   ```\n" + endMark + "\n",
	} {
		if _, err := Parse(md); err == nil {
			t.Errorf("%s: parsed without an error", name)
		}
	}
	bs, err := Parse("x\n" + beginMark + "\n1. a\n   " + varsMark + "\n   ```sh\n   export A=1 B=2 # c\n   ```\n" + endMark + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 || bs[0].Kind != Vars || bs[0].Text != "export A=1 B=2 # c\n" || bs[0].Line != 5 {
		t.Fatalf("got %+v", bs)
	}
}
