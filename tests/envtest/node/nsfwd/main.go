// Command nsfwd forwards TCP connections between the host's network namespace
// and the envtest node's, so that nothing has to be added to the host's
// network (no veth end, no address, no route on the host).
//
// Each rule is DIRECTION:LISTEN=DIAL, DIRECTION being
//   - "in":  listen on LISTEN inside the node namespace, dial DIAL from the
//     namespace nsfwd was started in (pods and kubelet -> the API server);
//   - "out": listen on LISTEN in nsfwd's own namespace, dial DIAL inside the
//     node namespace (the API server -> kubelet).
//
// Usage: nsfwd -netns /proc/<pid>/ns/net RULE...
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread switched into the network namespace nsFd.
// Sockets keep the namespace they were created in, so the listener or
// connection fn returns works from any goroutine afterwards.
func inNetns(nsFd int, fn func() error) error {
	runtime.LockOSThread()
	own, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer own.Close()
	if err := unix.Setns(nsFd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns: %w", err)
	}
	fnErr := fn()
	if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with this goroutine instead of
		// running other goroutines in the wrong namespace.
		log.Fatalf("cannot switch back to our network namespace: %v", err)
	}
	runtime.UnlockOSThread()
	return fnErr
}

type rule struct {
	in           bool
	listen, dial string
}

func parseRule(s string) (rule, error) {
	dir, rest, ok := strings.Cut(s, ":")
	listen, dial, ok2 := strings.Cut(rest, "=")
	if !ok || !ok2 || (dir != "in" && dir != "out") || listen == "" || dial == "" {
		return rule{}, fmt.Errorf("bad rule %q (want in:LISTEN=DIAL or out:LISTEN=DIAL)", s)
	}
	return rule{in: dir == "in", listen: listen, dial: dial}, nil
}

func main() {
	netns := flag.String("netns", "", "path of the node's network namespace (e.g. /proc/<pid>/ns/net)")
	flag.Parse()
	if *netns == "" || flag.NArg() == 0 {
		log.Fatal("usage: nsfwd -netns PATH in:LISTEN=DIAL|out:LISTEN=DIAL ...")
	}
	f, err := os.Open(*netns)
	if err != nil {
		log.Fatal(err)
	}
	nsFd := int(f.Fd())

	var wg sync.WaitGroup
	for _, arg := range flag.Args() {
		r, err := parseRule(arg)
		if err != nil {
			log.Fatal(err)
		}
		var ln net.Listener
		listen := func() (err error) { ln, err = net.Listen("tcp", r.listen); return err }
		if r.in {
			err = inNetns(nsFd, listen)
		} else {
			err = listen()
		}
		if err != nil {
			log.Fatalf("listen %s: %v", arg, err)
		}
		log.Printf("forwarding %s", arg)
		wg.Add(1)
		go func() {
			defer wg.Done()
			serve(ln, r, nsFd)
		}()
	}
	wg.Wait()
}

func serve(ln net.Listener, r rule, nsFd int) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatalf("accept on %s: %v", r.listen, err)
		}
		go func() {
			defer c.Close()
			var up net.Conn
			dial := func() (err error) { up, err = net.Dial("tcp", r.dial); return err }
			if r.in {
				err = dial()
			} else {
				err = inNetns(nsFd, dial)
			}
			if err != nil {
				log.Printf("dial %s: %v", r.dial, err)
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go pipe(up, c)
			go pipe(c, up)
			<-done
			<-done
		}()
	}
}
