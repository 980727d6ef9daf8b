package qmp

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"

	"github.com/snapvmm/snapvmm/vmm"
)

// TestGoQemuSocketMonitor drives snapvmm with an unmodified third-party
// QMP client: it negotiates, runs the snapshot commands and receives the
// job events.
func TestGoQemuSocketMonitor(t *testing.T) {
	e := newEnv(t, vmm.StatePrelaunch)
	mon, err := goqmp.NewSocketMonitor("unix", e.sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	raw, err := mon.Events(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// go-qemu hands events over an unbuffered channel and holds replies
	// behind them, so drain it while commands run.
	events := make(chan goqmp.Event, 100)
	go func() {
		for ev := range raw {
			events <- ev
		}
	}()
	run := func(cmd string) map[string]any {
		t.Helper()
		out, err := mon.Run([]byte(cmd))
		if err != nil {
			t.Fatalf("%s: %v", cmd, err)
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	waitConcluded := func(id string) []string {
		var seen []string
		timeout := time.After(10 * time.Second)
		for {
			select {
			case ev := <-events:
				if ev.Event == "JOB_STATUS_CHANGE" && ev.Data["id"] == id {
					seen = append(seen, fmt.Sprint(ev.Data["status"]))
					if ev.Data["status"] == "concluded" {
						return seen
					}
				}
			case <-timeout:
				t.Fatalf("job %s did not conclude; saw %v", id, seen)
			}
		}
	}
	for _, c := range []struct{ cmd, id, typ string }{
		{`{"execute":"snapshot-save","arguments":{"job-id":"gs","tag":"t","vmstate":"disk0","devices":["disk0","disk1"]}}`, "gs", "snapshot-save"},
		{`{"execute":"snapshot-load","arguments":{"job-id":"gl","tag":"t","vmstate":"disk0","devices":["disk0","disk1"]}}`, "gl", "snapshot-load"},
		{`{"execute":"snapshot-delete","arguments":{"job-id":"gd","tag":"t","devices":["disk0","disk1"]}}`, "gd", "snapshot-delete"},
	} {
		run(c.cmd)
		seen := waitConcluded(c.id)
		if strings.Join(seen, ",") != "created,running,waiting,pending,concluded" {
			t.Fatalf("%s events %v", c.id, seen)
		}
		jobs := run(`{"execute":"query-jobs"}`)["return"].([]any)
		j := jobs[len(jobs)-1].(map[string]any)
		if j["id"] != c.id || j["type"] != c.typ || j["status"] != "concluded" || j["error"] != nil {
			t.Fatalf("query-jobs %v", j)
		}
		run(fmt.Sprintf(`{"execute":"job-dismiss","arguments":{"id":"%s"}}`, c.id))
	}
	if e.guest.Saves != 1 || string(e.guest.Loaded) != "guest-ram" {
		t.Fatalf("guest saves %d, loaded %q", e.guest.Saves, e.guest.Loaded)
	}
}

// TestMonitorNeverBlocks: while a slow snapshot runs, another client's
// query-jobs keeps answering quickly: no reply takes half as long as the
// save (pollBound).
func TestMonitorNeverBlocks(t *testing.T) {
	e := newEnv(t, vmm.StateRunning)
	// A big state, so the save takes a while; touched now so the test
	// measures the monitor, not first-touch page faults of the payload.
	e.guest.Payload = make([]byte, 64<<20)
	for i := range e.guest.Payload {
		e.guest.Payload[i] = byte(i)
	}
	poller, saver := e.dial(t), e.dial(t)
	for _, c := range []*conn{poller, saver} {
		c.recv()
		c.send(`{"execute":"qmp_capabilities"}`)
		c.recv()
	}
	done := false
	poll := func() {
		poller.send(`{"execute":"query-jobs"}`)
		for {
			line := poller.recv()
			if strings.HasPrefix(line, `{"return"`) {
				done = strings.Contains(line, `"concluded"`)
				return
			}
		}
	}
	idle := idleWorst(poll)
	saveStart := time.Now()
	saver.send(`{"execute":"snapshot-save","arguments":{"job-id":"big","tag":"t","vmstate":"disk0","devices":["disk0"]}}`)
	var worst time.Duration
	deadline := time.Now().Add(2 * time.Minute)
	polls := 0
	for !done && time.Now().Before(deadline) {
		polls++
		start := time.Now()
		poll()
		worst = max(worst, time.Since(start))
	}
	if !done {
		t.Fatal("save never concluded")
	}
	if took := time.Since(saveStart); worst > pollBound(took, idle) {
		t.Fatalf("a query waited %v while the save ran for %v (idle replies: %v at worst)", worst, took, idle)
	}
	if polls < 10 {
		t.Fatalf("only %d polls ran during the save: it was too quick to show anything", polls)
	}
	t.Logf("slowest of %d query-jobs replies during the save: %v", polls, worst)
}

func TestManyClientsAndGarbage(t *testing.T) {
	e := newEnv(t, vmm.StatePrelaunch)
	var wg sync.WaitGroup
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.Dial("unix", e.sock)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			switch i % 3 {
			case 0:
				c.Write([]byte("}}}{{{\x00\xff garbage \"unterminated"))
			case 1:
				c.Write([]byte(strings.Repeat("[", 5000)))
			default:
				c.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"query-status"}` + "\n"))
				buf := make([]byte, 4096)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				var got string
				for !strings.Contains(got, "prelaunch") {
					n, err := c.Read(buf)
					if err != nil {
						t.Errorf("client %d: %v after %q", i, err, got)
						return
					}
					got += string(buf[:n])
				}
			}
		}(i)
	}
	wg.Wait()
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 64<<20 {
		t.Fatalf("heap grew by %d MiB serving 200 hostile clients", grew>>20)
	}
	// The server still serves a well-behaved client.
	c := e.dial(t)
	c.recv()
	c.send(`{"execute":"qmp_capabilities"}`)
	if r := c.recv(); r != `{"return": {}}` {
		t.Fatalf("got %s", r)
	}
}

func TestOversizedInputIsRefusedAndConnectionKept(t *testing.T) {
	e := newEnv(t, vmm.StatePrelaunch)
	c := e.dial(t)
	c.recv()
	big := `{"execute":"x","pad":"` + strings.Repeat("a", 3*MaxInput) + "\"}\n"
	go c.c.Write([]byte(big))
	if r := c.recv(); !strings.Contains(r, "exceeds the") {
		t.Fatalf("got %s", r)
	}
	c.send(`{"execute":"qmp_capabilities"}`)
	if r := c.recv(); r != `{"return": {}}` {
		t.Fatalf("got %s", r)
	}
}

func FuzzRequest(f *testing.F) {
	for _, s := range []string{`{"execute":"qmp_capabilities"}`, `{"execute":"snapshot-save","arguments":{"job-id":"j","tag":"t","vmstate":"d","devices":["d"]}}`,
		`not json`, `[1,2]`, `{"execute":1}`, `"str"`, `{"a":[{"b":"\"}"}]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var fr framer
		fr.max = 4096
		for _, x := range fr.feed(in) {
			if x.value != nil {
				var v any
				_ = json.Unmarshal(x.value, &v)
			}
		}
		args := map[string]any{}
		_ = json.Unmarshal(in, &args)
		_ = checkArgs(commands["snapshot-save"].params, args)
	})
}
