package zbx

import (
	"bufio"
	"fmt"
	"mime"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"
)

// Message is one email the sink accepted.
type Message struct {
	From    string
	To      []string
	Subject string // decoded Subject header ("" when the message had none)
	Data    string // the raw DATA section, dot-unstuffed
	At      time.Time
}

// SMTPSink is a minimal SMTP server on loopback that accepts every message and keeps it in memory,
// so a test can check that the Zabbix server really delivered an alert.
type SMTPSink struct {
	Addr string // 127.0.0.1:port
	Port int

	ln   net.Listener
	mu   sync.Mutex
	msgs []Message
	wg   sync.WaitGroup
}

// StartSMTP listens on 127.0.0.1:port and serves until the test ends.
func StartSMTP(t testing.TB, port int) *SMTPSink {
	t.Helper()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("smtp sink: listen: %v", err)
	}
	s := &SMTPSink{Addr: ln.Addr().String(), Port: port, ln: ln}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		ln.Close()
		s.wg.Wait()
	})
	return s
}

// Messages returns a copy of what was received so far.
func (s *SMTPSink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Find returns the messages whose subject or body contains every one of words.
func (s *SMTPSink) Find(words ...string) []Message {
	var out []Message
	for _, m := range s.Messages() {
		ok := true
		for _, w := range words {
			if !strings.Contains(m.Subject, w) && !strings.Contains(m.Data, w) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

func (s *SMTPSink) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.session(c)
		}()
	}
}

// session speaks just enough SMTP for libcurl (Zabbix 7.0) and Zabbix 6.0's own client.
func (s *SMTPSink) session(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	reply := func(line string) bool {
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		w.WriteString(line + "\r\n")
		return w.Flush() == nil
	}
	readLine := func() (string, bool) {
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		l, err := r.ReadString('\n')
		if err != nil {
			return "", false
		}
		return strings.TrimRight(l, "\r\n"), true
	}
	if !reply("220 kvm-test-sink ESMTP") {
		return
	}
	var from string
	var to []string
	for {
		line, ok := readLine()
		if !ok {
			return
		}
		verb := strings.ToUpper(line)
		switch {
		case strings.HasPrefix(verb, "EHLO"):
			reply("250-kvm-test-sink")
			reply("250 8BITMIME")
		case strings.HasPrefix(verb, "HELO"):
			reply("250 kvm-test-sink")
		case strings.HasPrefix(verb, "MAIL FROM:"):
			from, to = addrArg(line[len("MAIL FROM:"):]), nil
			reply("250 OK")
		case strings.HasPrefix(verb, "RCPT TO:"):
			to = append(to, addrArg(line[len("RCPT TO:"):]))
			reply("250 OK")
		case verb == "DATA":
			if !reply("354 end with <CRLF>.<CRLF>") {
				return
			}
			var b strings.Builder
			for {
				l, ok := readLine()
				if !ok {
					return
				}
				if l == "." {
					break
				}
				b.WriteString(strings.TrimPrefix(l, ".") + "\n")
			}
			s.record(from, to, b.String())
			reply("250 OK queued")
		case verb == "RSET":
			from, to = "", nil
			reply("250 OK")
		case verb == "NOOP":
			reply("250 OK")
		case verb == "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 command not implemented")
		}
	}
}

func addrArg(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, ' '); i >= 0 { // drop ESMTP parameters (SIZE=…)
		s = s[:i]
	}
	return strings.Trim(s, "<>")
}

func (s *SMTPSink) record(from string, to []string, data string) {
	m := Message{From: from, To: to, Data: data, At: time.Now()}
	if msg, err := mail.ReadMessage(strings.NewReader(data)); err == nil {
		dec := new(mime.WordDecoder)
		subj := msg.Header.Get("Subject")
		if d, err := dec.DecodeHeader(subj); err == nil {
			subj = d
		}
		m.Subject = subj
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
}
